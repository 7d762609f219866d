//! The access-log follower's decisions, made without I/O: which file a turn reads and from
//! where, whether it reads the next file ahead, and what it does once it has read all there was.
//!
//! The follower (`follow.rs`) lists the logs dir, reads the files, asks the store and does as it
//! is told here. Nothing here opens a file, asks the store or reads the clock, so every case can
//! be a row in the tables at the end.

/// How long after a slot ends no worker can still write to its file. A worker reads the clock only
/// once per turn of its event loop, and a write can be slow.
pub(crate) const SETTLE_MS: u64 = 1500;

/// After a turn that read this many lines or more, the follower pauses a little before the next
/// turn. Under load, lines are then read in batches of a few hundred instead of with one wake-up
/// per line, and those wake-ups are what following the log costs nginx. An idle log is still read
/// as soon as a line arrives.
pub(crate) const BUSY_LINES: usize = 16;

/// The follower's position. The lines of `name` before `offset` have been applied. While that file
/// settles (until no worker can still write to it), the lines of the next file, which is read
/// ahead, have also been applied up to that file's own offset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spot {
    pub(crate) name: String,
    pub(crate) offset: u64,
    pub(crate) ahead: Option<(String, u64)>,
}

impl Spot {
    pub(crate) fn start(name: &str) -> Spot {
        Spot {
            name: name.to_string(),
            offset: 0,
            ahead: None,
        }
    }

    /// The offset in the current file, or in the file read ahead. There is no offset for the file
    /// read ahead before that file is opened.
    pub(crate) fn offset_mut(&mut self, ahead: bool) -> Option<&mut u64> {
        match ahead {
            false => Some(&mut self.offset),
            true => self.ahead.as_mut().map(|(_, offset)| offset),
        }
    }

    /// Parses `<name> <offset>`, followed by the `<name> <offset>` of the file read ahead if there
    /// is one.
    pub(crate) fn parse(text: &str) -> Option<Spot> {
        let mut words = text.split_ascii_whitespace();
        let (name, offset) = (words.next()?, words.next()?.parse().ok()?);
        let ahead = match (words.next(), words.next()) {
            (None, _) => None,
            (Some(n), Some(o)) => Some((n.to_string(), o.parse().ok()?)),
            (Some(_), None) => return None,
        };
        words.next().is_none().then(|| Spot {
            name: name.to_string(),
            offset,
            ahead,
        })
    }
}

impl std::fmt::Display for Spot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.offset)?;
        match &self.ahead {
            Some((name, offset)) => write!(f, " {name} {offset}"),
            None => Ok(()),
        }
    }
}

/// A slot file: its name and its slot's start, in milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlotFile {
    pub(crate) name: String,
    pub(crate) start_ms: u64,
}

/// Identifies the file that a handle is open on, by its device and inode numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// What the follower saw when it looked at the current file: the file that the name leads to now,
/// and the file that the follower holds open. Each is `None` when it could not be determined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Look {
    pub(crate) named: Option<FileId>,
    pub(crate) open: Option<FileId>,
}

/// What one read of a file returned: the number of bytes, and how many complete lines they held.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Read {
    pub(crate) bytes: usize,
    pub(crate) lines: usize,
}

/// What the follower closes and discards before it reads, because the position has moved away from
/// it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Forget {
    Nothing,
    /// Forget the file read ahead. That file is gone, so nothing is read ahead any more.
    Ahead,
    /// Forget both files the follower holds open, and the partial last lines it kept from them.
    /// The position's file is gone (or there was no position), so the follower starts over from
    /// what the position says.
    Both,
}

/// What the follower does once a turn has read all there was.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// The follower is done with the current file. It saves `to` durably as the position, deletes
    /// the file and goes on with the next file at once. With `carry`, the file read ahead is that
    /// next file, and its handle and the partial last line kept from it become the current ones.
    Leave { to: Spot, carry: bool },
    /// Look whether the current file's name still leads to the file held open.
    Look,
    /// The name leads to a new file, because the old file was deleted while nginx was writing to it
    /// and nginx created it again. The follower saves `from` durably as the position, closes the
    /// old file and reads the new one from its start.
    Reopen { from: Spot },
    /// Nothing new was written, so wait for nginx to write more.
    Wait,
    /// Many lines came at once. Pause a little, so that the next read takes a whole batch.
    Pause,
    /// Read again at once.
    ReadMore,
}

/// One turn of the follower: which file it reads and from where, and what it learned while
/// reading. What it learned decides what the follower does next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Turn {
    /// Files of slots before the current one. An earlier run read them to their end, so they are
    /// deleted.
    pub(crate) stale: Vec<String>,
    pub(crate) forget: Forget,
    /// The file being read, and the first file after it.
    pub(crate) current: String,
    pub(crate) next: Option<String>,
    /// Whether no worker can still write to the current file, or start a file for a slot between
    /// it and the next file (a slot in which nothing was logged yet). This is true once the next
    /// file's slot began at least `SETTLE_MS` ago.
    pub(crate) finished: bool,
    /// The follower's position, which moves forward as it reads.
    pub(crate) here: Spot,
    /// Whether the current file is open. Opening it may fail, and then it is tried again on the next
    /// turn.
    pub(crate) open: bool,
    /// What reading the current file and the file read ahead returned.
    pub(crate) read: Read,
    pub(crate) read_ahead: Read,
    /// What the follower saw when told to [`Step::Look`].
    pub(crate) looked: Option<Look>,
    /// The store could not durably save the position past the current file, so the follower stays
    /// on the current file.
    pub(crate) leave_failed: bool,
    /// The store could not durably save the position at the start of the new file, so the follower
    /// waits.
    pub(crate) reopen_failed: bool,
}

impl Turn {
    /// Begins the turn that reads from `position` among `files` (given in slot order) at `now_ms`.
    /// Returns `None` while there is no file at all.
    pub(crate) fn begin(files: &[SlotFile], position: Option<&Spot>, now_ms: u64) -> Option<Turn> {
        let current = position
            .and_then(|p| files.iter().find(|f| f.name == p.name))
            .or(files.first())?;
        let stale = files
            .iter()
            .take_while(|f| f.start_ms < current.start_ms)
            .map(|f| f.name.clone())
            .collect();
        let (mut here, mut forget) = match position {
            Some(p) if p.name == current.name => (p.clone(), Forget::Nothing),
            // The position's file is gone, or there is no position. What was read ahead still
            // counts as read, and the file read ahead may be the one this turn reads.
            other => {
                let here = match other.and_then(|p| p.ahead.clone()) {
                    Some((name, offset)) if name == current.name => Spot {
                        name,
                        offset,
                        ahead: None,
                    },
                    read => Spot {
                        ahead: read,
                        ..Spot::start(&current.name)
                    },
                };
                (here, Forget::Both)
            }
        };
        // What was read ahead still counts as read while its file exists. A file of an older slot
        // can still appear before it, written by a worker that read its clock before the slot
        // changed.
        let later = |name: &str| files.iter().any(|f| f.name == name && f.start_ms > current.start_ms);
        if here.ahead.as_ref().is_some_and(|(name, _)| !later(name)) {
            here.ahead = None;
            if forget == Forget::Nothing {
                forget = Forget::Ahead;
            }
        }
        let next = files.iter().find(|f| f.start_ms > current.start_ms);
        Some(Turn {
            stale,
            forget,
            current: current.name.clone(),
            next: next.map(|n| n.name.clone()),
            // The next file is read ahead in the meantime, so waiting for the current file to
            // settle adds no delay.
            finished: next.is_some_and(|n| now_ms >= n.start_ms + SETTLE_MS),
            here,
            open: false,
            read: Read::default(),
            read_ahead: Read::default(),
            looked: None,
            leave_failed: false,
            reopen_failed: false,
        })
    }

    /// The file to read ahead. While the current file is open and settling, this is the next file,
    /// so that its lines do not wait for the current file to settle. Returns `None` when the file
    /// read ahead earlier is not the next file, because a late file came in between. In that case
    /// the earlier file stays read ahead, and the late file waits.
    pub(crate) fn ahead(&self) -> Option<&str> {
        let next = self.next.as_deref()?;
        let ours = self.here.ahead.as_ref().is_none_or(|(name, _)| name == next);
        (!self.finished && self.open && ours).then_some(next)
    }

    /// What the follower does now that the turn has read all there was.
    pub(crate) fn step(&self) -> Step {
        // A file is left only once it has been read to its end (which this turn just did) and
        // what its lines wrote is durable.
        if self.finished
            && self.open
            && !self.leave_failed
            && let Some(next) = &self.next
        {
            // Reading the next file goes on from where it was read ahead. A file read ahead that is
            // not the next file, because a late file came in between, stays read ahead.
            return match &self.here.ahead {
                Some((name, offset)) if name == next => Step::Leave {
                    to: Spot {
                        name: name.clone(),
                        offset: *offset,
                        ahead: None,
                    },
                    carry: true,
                },
                other => Step::Leave {
                    to: Spot {
                        ahead: other.clone(),
                        ..Spot::start(next)
                    },
                    carry: false,
                },
            };
        }
        // The file may have been deleted while nginx was writing to it, and nginx then created it
        // again under the same name. The old file has been read to its end, and the new one is
        // read from its start.
        if self.read.bytes == 0 && self.open && !self.reopen_failed {
            match self.looked {
                None => return Step::Look,
                Some(Look {
                    named: Some(named),
                    open: Some(open),
                }) if named != open => {
                    return Step::Reopen {
                        from: Spot {
                            offset: 0,
                            ..self.here.clone()
                        },
                    };
                }
                Some(_) => {}
            }
        }
        if self.read.bytes + self.read_ahead.bytes == 0 {
            Step::Wait
        } else if self.read.lines + self.read_ahead.lines >= BUSY_LINES {
            Step::Pause
        } else {
            Step::ReadMore
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time early in slot 11, while slot 10's file is still settling.
    const EARLY: u64 = 11_100;

    fn name(s: u64) -> String {
        format!("access-{s}.log")
    }

    /// The position `offset` bytes into the file of slot `s`, with the file of slot `a` read
    /// ahead to offset `o`.
    fn at(s: u64, offset: u64, ahead: Option<(u64, u64)>) -> Spot {
        Spot {
            name: name(s),
            offset,
            ahead: ahead.map(|(a, o)| (name(a), o)),
        }
    }

    /// A turn that reads slot 10's file from offset 500, with slot 11's file next, before
    /// it opened or read anything.
    fn turn() -> Turn {
        Turn {
            stale: vec![],
            forget: Forget::Nothing,
            current: name(10),
            next: Some(name(11)),
            finished: false,
            here: at(10, 500, None),
            open: false,
            read: Read::default(),
            read_ahead: Read::default(),
            looked: None,
            leave_failed: false,
            reopen_failed: false,
        }
    }

    /// The same turn once it opened slot 10's file and read nothing new.
    fn opened() -> Turn {
        Turn { open: true, ..turn() }
    }

    /// A row for [`Turn::begin`]: what it shows, the slots of the files there, the position, the
    /// time, and the turn expected.
    type Begin<'a> = (&'a str, Vec<u64>, Option<Spot>, u64, Option<Turn>);

    fn begins(rows: Vec<Begin>) {
        for (what, slots, position, now_ms, want) in rows {
            let files: Vec<SlotFile> = slots
                .iter()
                .map(|&s| SlotFile {
                    name: name(s),
                    start_ms: s * 1000,
                })
                .collect();
            assert_eq!(Turn::begin(&files, position.as_ref(), now_ms), want, "{what}");
        }
    }

    #[test]
    fn a_turn_reads_on_from_the_position_or_from_the_first_file() {
        begins(vec![
            ("no file yet: nothing to read", vec![], None, EARLY, None),
            (
                "every file gone: nothing to read",
                vec![],
                Some(at(10, 500, None)),
                EARLY,
                None,
            ),
            (
                "first run: the first file from its start",
                vec![10, 11],
                None,
                EARLY,
                Some(Turn {
                    forget: Forget::Both,
                    here: at(10, 0, None),
                    ..turn()
                }),
            ),
            (
                "the position's file is there: on from the position",
                vec![10, 11],
                Some(at(10, 500, None)),
                EARLY,
                Some(turn()),
            ),
            (
                "files of slots before the position's are stale",
                vec![8, 9, 10, 11],
                Some(at(10, 500, None)),
                EARLY,
                Some(Turn {
                    stale: vec![name(8), name(9)],
                    ..turn()
                }),
            ),
            (
                "the position's file is gone: the first file from its start",
                vec![10, 11],
                Some(at(9, 500, None)),
                EARLY,
                Some(Turn {
                    forget: Forget::Both,
                    here: at(10, 0, None),
                    ..turn()
                }),
            ),
            (
                "the position's file is gone: the file it read ahead goes on where it was",
                vec![10, 11],
                Some(at(9, 500, Some((10, 300)))),
                EARLY,
                Some(Turn {
                    forget: Forget::Both,
                    here: at(10, 300, None),
                    ..turn()
                }),
            ),
        ]);
    }

    #[test]
    fn what_was_read_ahead_stays_read_while_its_file_is_there() {
        begins(vec![
            (
                "its file is there",
                vec![10, 11],
                Some(at(10, 500, Some((11, 300)))),
                EARLY,
                Some(Turn {
                    here: at(10, 500, Some((11, 300))),
                    ..turn()
                }),
            ),
            (
                "its file is gone: nothing is read ahead",
                vec![10],
                Some(at(10, 500, Some((11, 300)))),
                EARLY,
                Some(Turn {
                    forget: Forget::Ahead,
                    next: None,
                    ..turn()
                }),
            ),
            (
                "a late file of an older slot came between",
                vec![10, 11, 12],
                Some(at(10, 500, Some((12, 300)))),
                12_100,
                Some(Turn {
                    here: at(10, 500, Some((12, 300))),
                    ..turn()
                }),
            ),
            (
                "the position's file is gone, and a late file came before the one read ahead",
                vec![10, 11],
                Some(at(9, 500, Some((11, 300)))),
                EARLY,
                Some(Turn {
                    forget: Forget::Both,
                    here: at(10, 0, Some((11, 300))),
                    ..turn()
                }),
            ),
            (
                "the position's file is gone, and the one read ahead too",
                vec![10],
                Some(at(9, 500, Some((11, 300)))),
                EARLY,
                Some(Turn {
                    forget: Forget::Both,
                    next: None,
                    here: at(10, 0, None),
                    ..turn()
                }),
            ),
        ]);
    }

    #[test]
    fn a_file_is_finished_once_the_next_slot_began_settle_ms_ago() {
        let finished = Turn {
            finished: true,
            ..turn()
        };
        let alone = Turn { next: None, ..turn() };
        let here = || Some(at(10, 500, None));
        begins(vec![
            ("just under", vec![10, 11], here(), 11_000 + SETTLE_MS - 1, Some(turn())),
            ("just so", vec![10, 11], here(), 11_000 + SETTLE_MS, Some(finished)),
            ("never without a next file", vec![10], here(), 99_000, Some(alone)),
        ]);
    }

    #[test]
    fn the_next_file_is_read_ahead_while_the_current_one_settles() {
        let rows = [
            ("the next file", opened(), Some(11)),
            (
                "the next file, read ahead before",
                Turn {
                    here: at(10, 500, Some((11, 300))),
                    ..opened()
                },
                Some(11),
            ),
            (
                "none once the current file is finished",
                Turn {
                    finished: true,
                    ..opened()
                },
                None,
            ),
            ("none while the current file is not open", turn(), None),
            ("none without a next file", Turn { next: None, ..opened() }, None),
            (
                "none while a later file is read ahead: a late file came between",
                Turn {
                    here: at(10, 500, Some((12, 300))),
                    ..opened()
                },
                None,
            ),
        ];
        for (what, turn, want) in rows {
            assert_eq!(turn.ahead(), want.map(name).as_deref(), "{what}");
        }
    }

    fn steps(rows: Vec<(&str, Turn, Step)>) {
        for (what, turn, want) in rows {
            assert_eq!(turn.step(), want, "{what}");
        }
    }

    #[test]
    fn a_finished_file_is_left_for_the_next_one() {
        let finished = || Turn {
            finished: true,
            ..opened()
        };
        let leave = |to, carry| Step::Leave { to, carry };
        steps(vec![
            ("to the next file's start", finished(), leave(at(11, 0, None), false)),
            (
                "to where the next file was read ahead, on its handle",
                Turn {
                    here: at(10, 500, Some((11, 300))),
                    ..finished()
                },
                leave(at(11, 300, None), true),
            ),
            (
                "to the late file that came between; the file read ahead stays ahead",
                Turn {
                    here: at(10, 500, Some((12, 300))),
                    ..finished()
                },
                leave(at(11, 0, Some((12, 300))), false),
            ),
            (
                "also after a turn that read lines: it read the file to its end",
                Turn {
                    read: Read { bytes: 300, lines: 3 },
                    ..finished()
                },
                leave(at(11, 0, None), false),
            ),
            (
                "not while it is not open",
                Turn {
                    open: false,
                    ..finished()
                },
                Step::Wait,
            ),
            (
                "not while the store cannot save the move: the file is looked at instead",
                Turn {
                    leave_failed: true,
                    ..finished()
                },
                Step::Look,
            ),
        ]);
    }

    #[test]
    fn a_file_made_anew_under_the_current_name_is_read_from_its_start() {
        let (old, new) = (FileId { dev: 1, ino: 7 }, FileId { dev: 1, ino: 8 });
        let looked = |named, open| Turn {
            looked: Some(Look { named, open }),
            here: at(10, 500, Some((11, 300))),
            ..opened()
        };
        let reopen = Step::Reopen {
            from: at(10, 0, Some((11, 300))),
        };
        steps(vec![
            ("nothing read: look", opened(), Step::Look),
            (
                "the name leads to the open file: wait",
                looked(Some(old), Some(old)),
                Step::Wait,
            ),
            ("the name leads to a new file", looked(Some(new), Some(old)), reopen),
            ("the name leads nowhere: wait", looked(None, Some(old)), Step::Wait),
            (
                "the open file cannot be told: wait",
                looked(Some(new), None),
                Step::Wait,
            ),
            (
                "a new file, but the store cannot save the move: wait",
                Turn {
                    reopen_failed: true,
                    ..looked(Some(new), Some(old))
                },
                Step::Wait,
            ),
            ("no file open: nothing to look at", turn(), Step::Wait),
            (
                "lines read: no need to look",
                Turn {
                    read: Read { bytes: 100, lines: 1 },
                    ..opened()
                },
                Step::ReadMore,
            ),
        ]);
    }

    #[test]
    fn an_idle_log_is_waited_for_and_a_busy_one_read_in_batches() {
        let lines = |lines: usize| Read {
            bytes: lines * 100,
            lines,
        };
        let same = Some(Look {
            named: Some(FileId { dev: 1, ino: 7 }),
            open: Some(FileId { dev: 1, ino: 7 }),
        });
        let after = |read, read_ahead| Turn {
            read,
            read_ahead,
            looked: same,
            ..opened()
        };
        steps(vec![
            ("nothing read: wait", after(lines(0), lines(0)), Step::Wait),
            (
                "a few lines: at once",
                after(lines(BUSY_LINES - 1), lines(0)),
                Step::ReadMore,
            ),
            (
                "lines read ahead only: at once",
                after(lines(0), lines(2)),
                Step::ReadMore,
            ),
            ("a busy log: pause", after(lines(BUSY_LINES), lines(0)), Step::Pause),
            (
                "busy across both files: pause",
                after(lines(10), lines(BUSY_LINES - 10)),
                Step::Pause,
            ),
            (
                "bytes but no whole line yet: at once",
                after(Read { bytes: 40, lines: 0 }, lines(0)),
                Step::ReadMore,
            ),
        ]);
    }
}
