//! The terminal in dashboard mode, restored on every way out.
//!
//! `ratatui::init` installs a panic hook that restores the terminal before the panic message is
//! printed; this guard's `Drop` covers returns, errors and signals, which all unwind through it.

use std::io::{IsTerminal, Stdout};

use anyhow::Context;
use ratatui::{backend::CrosstermBackend, CompletedFrame, Frame, Terminal};

pub struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    pub fn enter() -> anyhow::Result<Self> {
        if !std::io::stdout().is_terminal() {
            anyhow::bail!("the dashboard needs a terminal on stdout; use --json for scripts");
        }
        let terminal =
            ratatui::try_init().context("setting up the terminal (is stdout a terminal?)")?;
        Ok(Self { terminal })
    }

    pub fn draw(&mut self, render: impl FnOnce(&mut Frame)) -> anyhow::Result<CompletedFrame<'_>> {
        self.terminal.draw(render).context("drawing the dashboard")
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}
