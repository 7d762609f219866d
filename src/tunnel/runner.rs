//! How a `tailscale` command is run: as a local process (`FERRY_PROVIDER=tailscale`), or inside the
//! Tailscale sidecar container through the Docker Engine API (`FERRY_PROVIDER=docker`). The two
//! providers differ only here. Every run has a timeout; a local process is killed when it passes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;

/// What a finished command printed, and its exit status.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run {bin}: {error}")]
    Spawn { bin: String, error: String },
    #[error("`tailscale {command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("Docker Engine: {0}")]
    Docker(String),
}

pub enum Runner {
    Process {
        bin: PathBuf,
        socket: Option<PathBuf>,
    },
    Docker {
        /// The client is connected, and the API version negotiated, on first use and again after
        /// a failure.
        client: tokio::sync::Mutex<Option<bollard::Docker>>,
        container: String,
        bin: String,
        socket: Option<PathBuf>,
    },
}

impl Runner {
    pub fn process(bin: PathBuf, socket: Option<PathBuf>) -> Self {
        Runner::Process { bin, socket }
    }

    pub fn docker(container: String, bin: String, socket: Option<PathBuf>) -> Self {
        Runner::Docker {
            client: tokio::sync::Mutex::new(None),
            container,
            bin,
            socket,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Runner::Process { bin, .. } => format!("{}", bin.display()),
            Runner::Docker { container, .. } => format!("docker exec in container {container}"),
        }
    }

    fn argv(socket: &Option<PathBuf>, args: &[String]) -> Vec<String> {
        let mut v = Vec::with_capacity(args.len() + 1);
        if let Some(s) = socket {
            v.push(format!("--socket={}", s.display()));
        }
        v.extend(args.iter().cloned());
        v
    }

    pub async fn run(&self, args: &[String], timeout: Duration) -> Result<Output, RunError> {
        match self {
            Runner::Process { bin, socket } => run_process(bin, socket, args, timeout).await,
            Runner::Docker {
                client,
                container,
                bin,
                socket,
            } => run_docker(client, container, bin, socket, args, timeout).await,
        }
    }
}

fn timed_out(args: &[String], timeout: Duration) -> RunError {
    RunError::Timeout {
        command: args.join(" "),
        timeout,
    }
}

/// Runs the CLI as a local process, killed when it passes `timeout`.
async fn run_process(
    bin: &Path,
    socket: &Option<PathBuf>,
    args: &[String],
    timeout: Duration,
) -> Result<Output, RunError> {
    use tokio::io::AsyncReadExt;
    let spawn_err = |e: std::io::Error| RunError::Spawn {
        bin: bin.display().to_string(),
        error: e.to_string(),
    };
    let mut child = tokio::process::Command::new(bin)
        .args(Runner::argv(socket, args))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let mut stdout_pipe = child.stdout.take().expect("piped");
    let mut stderr_pipe = child.stderr.take().expect("piped");
    let stderr_task = tokio::spawn(async move {
        let mut b = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut b).await;
        b
    });
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stdout = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stdout_pipe.read(&mut buf)).await {
            Err(_) => return Err(timed_out(args, timeout)),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => stdout.extend_from_slice(&buf[..n]),
        }
        // The CLI waits forever for the owner to enable Funnel, and the link it printed is
        // all the answer ferry needs.
        if awaits_enablement(&stdout) {
            let _ = child.kill().await;
            return Ok(Output {
                code: -1,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::new(),
            });
        }
    }
    // Dropping the child on timeout kills it (kill_on_drop).
    let status = tokio::time::timeout_at(deadline, child.wait())
        .await
        .map_err(|_| timed_out(args, timeout))?
        .map_err(spawn_err)?;
    let stderr = stderr_task.await.unwrap_or_default();
    Ok(Output {
        code: status.code().map_or(-1, i64::from),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Runs the CLI in the sidecar container through the Docker Engine API.
async fn run_docker(
    client: &tokio::sync::Mutex<Option<bollard::Docker>>,
    container: &str,
    bin: &str,
    socket: &Option<PathBuf>,
    args: &[String],
    timeout: Duration,
) -> Result<Output, RunError> {
    let docker = {
        let mut c = client.lock().await;
        match c.as_ref() {
            Some(d) => d.clone(),
            None => {
                let d = tokio::time::timeout(timeout, connect())
                    .await
                    .map_err(|_| RunError::Docker("the Docker Engine did not answer".into()))??;
                *c = Some(d.clone());
                d
            }
        }
    };
    let mut cmd = vec![bin.to_string()];
    cmd.extend(Runner::argv(socket, args));
    let r = tokio::time::timeout(timeout, exec(&docker, container, cmd)).await;
    match r {
        Err(_) => Err(timed_out(args, timeout)),
        Ok(Err(e)) => {
            // The next call connects again (the daemon may have restarted).
            *client.lock().await = None;
            Err(e)
        }
        Ok(Ok(out)) => Ok(out),
    }
}

/// Whether the CLI printed Funnel's enablement link and now waits for the owner to follow it.
fn awaits_enablement(stdout: &[u8]) -> bool {
    let s = String::from_utf8_lossy(stdout);
    // The whole link line must have arrived.
    s.split_once("To enable, visit:")
        .and_then(|(_, rest)| rest.find("https://").map(|at| &rest[at..]))
        .is_some_and(|link| link.contains('\n'))
}

async fn connect() -> Result<bollard::Docker, RunError> {
    let d = bollard::Docker::connect_with_defaults().map_err(|e| RunError::Docker(format!("cannot connect: {e}")))?;
    // Older engines refuse a client that speaks a newer API than theirs.
    d.negotiate_version().await.map_err(|e| {
        RunError::Docker(format!(
            "cannot reach the engine (DOCKER_HOST or /var/run/docker.sock): {e}"
        ))
    })
}

async fn exec(docker: &bollard::Docker, container: &str, cmd: Vec<String>) -> Result<Output, RunError> {
    use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| RunError::Docker(format!("exec in container {container:?}: {e}")))?;
    let started = docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| RunError::Docker(format!("start exec: {e}")))?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(chunk) = output.next().await {
            match chunk.map_err(|e| RunError::Docker(format!("exec output: {e}")))? {
                bollard::container::LogOutput::StdOut { message } => stdout.extend_from_slice(&message),
                bollard::container::LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                _ => {}
            }
            if awaits_enablement(&stdout) {
                // An exec cannot be killed through the API; it ends when the owner enables
                // Funnel or the sidecar restarts. ferry stops waiting for it.
                return Ok(Output {
                    code: -1,
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                });
            }
        }
    }
    let inspected = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| RunError::Docker(format!("inspect exec: {e}")))?;
    Ok(Output {
        code: inspected.exit_code.unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enablement_link_ends_the_wait_once_complete() {
        let full = b"Funnel is not enabled on your tailnet.\nTo enable, visit:\n\n         https://login.tailscale.com/f/funnel?node=n1\n";
        assert!(awaits_enablement(full));
        assert!(!awaits_enablement(&full[..full.len() - 5]));
        assert!(!awaits_enablement(
            b"Available on the internet:\n\nhttps://x.ts.net/s/a\n"
        ));
    }

    #[tokio::test]
    async fn a_hung_command_times_out_and_output_is_kept() {
        let r = Runner::process("sh".into(), None);
        let out = r
            .run(
                &["-c".into(), "echo out; echo err >&2; exit 3".into()],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (3, "out\n", "err\n")
        );
        let started = std::time::Instant::now();
        let e = r
            .run(&["-c".into(), "sleep 30".into()], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let waiting = "printf 'To enable, visit:\\n\\n   https://login.tailscale.com/f/funnel?node=n1\\n'; sleep 30";
        let out = r
            .run(&["-c".into(), waiting.into()], Duration::from_secs(10))
            .await
            .unwrap();
        assert!(out.stdout.contains("login.tailscale.com"), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let missing = Runner::process("/nonexistent/tailscale".into(), None);
        assert!(matches!(
            missing.run(&[], Duration::from_secs(1)).await,
            Err(RunError::Spawn { .. })
        ));
    }
}
