//! Finding the programs ferry runs.

/// Finds a program: a path, or a name on `PATH` (nginx, the `tailscale` CLI).
pub fn find_program(bin: &str) -> Option<std::path::PathBuf> {
    if bin.contains('/') {
        let p = std::path::PathBuf::from(bin);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(bin)).find(|p| p.is_file())
}
