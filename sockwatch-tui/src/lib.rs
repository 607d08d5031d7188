//! sockwatch: IPv4 sockets watched with eBPF, shown live in the terminal.
//!
//! `probes` loads the kernel programs; `events` decodes what they send; `reducer` owns the
//! kernel-driven state and `view_state` what the user chose to see; `rates` and `dns` derive
//! rates and host names; `ui` renders it all; `json` prints it headless; `app` wires them in one
//! async loop.

pub mod app;
pub mod cli;
pub mod clock;
pub mod dns;
pub mod events;
pub mod json;
pub mod logfile;
pub mod probes;
pub mod procfs;
pub mod rates;
pub mod reducer;
pub mod socket_id;
pub mod terminal;
pub mod tracker;
pub mod ui;
pub mod view_state;
