//! sockwatch: TCP and UDP sockets (IPv4 and IPv6) watched with eBPF, shown live in the terminal.
//!
//! The pipeline, one folder a stage (a stage never imports a later one):
//! `kernel` (load the programs, decode what they send, square it with the map and /proc) →
//! `model` (the one owner of the sockets, a pure reducer) → `view` (the dashboard), or `json`
//! (headless lines). `socket` is the one record they all share; `app` runs the one loop.
//! See docs/ARCHITECTURE.md.

pub mod app;
pub mod check;
pub mod cli;
pub mod clock;
pub mod history;
pub mod json;
pub mod kernel;
pub mod logfile;
pub mod metrics;
pub mod model;
pub mod open_sockets;
pub mod owner;
pub mod replay;
pub mod socket;
pub mod terminal;
pub mod view;

#[cfg(test)]
mod layering;
