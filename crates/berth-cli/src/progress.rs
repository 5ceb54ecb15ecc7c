//! Pull and push progress as Docker draws it: one line per layer with its short digest,
//! a live bar with bytes and speed while it downloads and extracts, ending `Pull complete`
//! or `Already exists`. Without a terminal, one plain line per change of state.

use std::collections::HashMap;
use std::io::IsTerminal as _;

use containerd_client::types::transfer::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::image::short_digest;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Waiting,
    Downloading,
    Downloaded,
    Extracting,
    Done,
    Exists,
}

impl State {
    fn words(self, push: bool) -> &'static str {
        match (self, push) {
            (State::Waiting, false) => "Waiting",
            (State::Waiting, true) => "Preparing",
            (State::Downloading, false) => "Downloading",
            (State::Downloading, true) => "Pushing",
            (State::Downloaded, _) => "Download complete",
            (State::Extracting, _) => "Extracting",
            (State::Done, false) => "Pull complete",
            (State::Done, true) => "Pushed",
            (State::Exists, _) => "Already exists",
        }
    }
}

struct Line {
    bar: Option<ProgressBar>,
    state: State,
}

pub struct Display {
    multi: Option<MultiProgress>,
    lines: HashMap<String, Line>,
    order: Vec<String>,
    push: bool,
    /// True once anything was downloaded (or pushed).
    pub transferred: bool,
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix}: {msg:<12} [{bar:40}] {bytes:>9}/{total_bytes:<9} {binary_bytes_per_sec}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}: {msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Display {
    /// Bars on stderr's terminal, or plain lines when it is not one.
    pub fn new(push: bool) -> Display {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Display {
            multi,
            lines: HashMap::new(),
            order: Vec::new(),
            push,
            transferred: false,
        }
    }

    /// A line of text above the bars.
    pub fn say(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    pub fn event(&mut self, p: &Progress) {
        if !p.name.starts_with("layer-") {
            return;
        }
        let state = match p.event.as_str() {
            "waiting" => State::Waiting,
            "downloading" | "uploading" | "pushing" => State::Downloading,
            "complete" | "pushed" => {
                if self.push {
                    State::Done
                } else {
                    State::Downloaded
                }
            }
            "extracting" => State::Extracting,
            "extracted" => State::Done,
            "already exists" | "exists" => State::Exists,
            _ => return,
        };
        if matches!(state, State::Downloading | State::Downloaded) {
            self.transferred = true;
        }
        let digest = p.name.trim_start_matches("layer-").to_owned();
        let short = short_digest(&digest);
        if !self.lines.contains_key(&digest) {
            let bar = self.multi.as_ref().map(|m| {
                let b = m.add(ProgressBar::new(p.total.max(0) as u64));
                b.set_style(line_style());
                b.set_prefix(short.clone());
                b
            });
            self.order.push(digest.clone());
            self.lines.insert(
                digest.clone(),
                Line {
                    bar,
                    state: State::Waiting,
                },
            );
            if self.multi.is_none() && state == State::Waiting {
                eprintln!("{short}: {}", State::Waiting.words(self.push));
            }
        }
        let push = self.push;
        let Some(line) = self.lines.get_mut(&digest) else {
            return;
        };
        // A finished layer stays finished; late events from a slow stream change nothing.
        if matches!(line.state, State::Done) {
            return;
        }
        let changed = line.state != state;
        line.state = state;
        match &line.bar {
            Some(b) => {
                match state {
                    State::Downloading | State::Extracting => {
                        if changed {
                            b.set_style(bar_style());
                            b.set_length(p.total.max(0) as u64);
                            b.reset_elapsed();
                        }
                        b.set_position(p.progress.max(0) as u64);
                    }
                    _ => b.set_style(line_style()),
                }
                b.set_message(state.words(push));
                if matches!(state, State::Done | State::Exists) {
                    b.finish();
                }
            }
            None => {
                if changed && state != State::Waiting {
                    eprintln!("{short}: {}", state.words(push));
                }
            }
        }
    }

    /// Marks every layer finished (the transfer succeeded, whatever events were dropped).
    pub fn finish(&mut self) {
        for d in &self.order {
            let Some(line) = self.lines.get_mut(d) else {
                continue;
            };
            if matches!(line.state, State::Done | State::Exists) {
                continue;
            }
            line.state = State::Done;
            match &line.bar {
                Some(b) => {
                    b.set_style(line_style());
                    b.finish_with_message(State::Done.words(self.push));
                }
                None => eprintln!("{}: {}", short_digest(d), State::Done.words(self.push)),
            }
        }
    }

    /// Drops the bars without finishing them (the transfer failed).
    pub fn abandon(&mut self) {
        for line in self.lines.values() {
            if let Some(b) = &line.bar {
                b.abandon();
            }
        }
    }
}
