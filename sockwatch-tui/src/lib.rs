//! sockwatch: IPv4 sockets watched with eBPF, shown live in the terminal.
//!
//! `probes` loads the kernel programs; `events` decodes what they send; `reducer` owns the
//! state; `ui` renders it; `json` prints it headless; `app` wires them in one async loop.

pub mod app;
pub mod cli;
pub mod clock;
pub mod events;
pub mod json;
pub mod logfile;
pub mod probes;
pub mod procfs;
pub mod reducer;
pub mod terminal;
pub mod tracker;
pub mod ui;
