//! Styles that read on dark and light terminals alike: the terminal's own foreground and
//! background, emphasis by modifiers (bold, dim, reversed), and only the named ANSI colours,
//! which each terminal theme maps to something legible on its own background. No RGB, no
//! fixed backgrounds. With `NO_COLOR` set, the modifiers alone remain.

use ratatui::style::{Color, Modifier, Style};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Theme {
    color: bool,
}

impl Theme {
    pub fn new(color: bool) -> Self {
        Self { color }
    }

    fn fg(self, color: Color) -> Style {
        if self.color {
            Style::new().fg(color)
        } else {
            Style::new()
        }
    }

    /// The program's name in the header.
    pub fn badge(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)
    }

    pub fn label(self) -> Style {
        Style::new().add_modifier(Modifier::DIM)
    }

    pub fn value(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    pub fn table_header(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    }

    pub fn sorted_column(self) -> Style {
        self.fg(Color::Cyan)
            .add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    }

    pub fn selected(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    pub fn connecting(self) -> Style {
        self.fg(Color::Yellow)
    }

    pub fn established(self) -> Style {
        self.fg(Color::Green)
    }

    /// Closed sockets that linger, and everything secondary.
    pub fn dim(self) -> Style {
        Style::new().add_modifier(Modifier::DIM)
    }

    /// Something that needs attention: lost events, a bad filter word.
    pub fn warning(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    pub fn paused(self) -> Style {
        self.fg(Color::Yellow)
            .add_modifier(Modifier::BOLD | Modifier::REVERSED)
    }

    pub fn key(self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    pub fn sent(self) -> Style {
        self.fg(Color::Green)
    }

    pub fn received(self) -> Style {
        self.fg(Color::Blue)
    }

    pub fn border(self, focused: bool) -> Style {
        if focused {
            self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::DIM)
        }
    }
}
