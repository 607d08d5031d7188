//! Keys to actions, the way htop, btop, bottom and bpftop agree on them. Only key presses count
//! (not the releases and repeats some terminals report).

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{
    state::{KeyMode, ViewAction as V},
    Message as Action,
};

pub fn action_for(key: KeyEvent, mode: KeyMode) -> Option<Action> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    let control = key.modifiers.contains(KeyModifiers::CONTROL);
    if control && matches!(key.code, KeyCode::Char('c' | 'C')) {
        return Some(Action::Quit);
    }
    if key.modifiers.contains(KeyModifiers::ALT) {
        return None;
    }
    let view = match mode {
        KeyMode::Filter => filter_line(key.code, control)?,
        KeyMode::Help => match key.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Esc | KeyCode::Char('?') | KeyCode::Enter | KeyCode::F(1) => V::ToggleHelp,
            _ => return None,
        },
        KeyMode::Normal if control => match key.code {
            KeyCode::Char('b') => V::PageUp,
            KeyCode::Char('f') => V::PageDown,
            _ => return None,
        },
        KeyMode::Normal => match key.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            code => normal(code)?,
        },
    };
    Some(Action::View(view))
}

fn normal(code: KeyCode) -> Option<V> {
    Some(match code {
        KeyCode::Char('?') | KeyCode::F(1) => V::ToggleHelp,
        KeyCode::Char('/') => V::FilterStart,
        KeyCode::Esc => V::Back,
        KeyCode::Up | KeyCode::Char('k') => V::Up,
        KeyCode::Down | KeyCode::Char('j') => V::Down,
        KeyCode::PageUp => V::PageUp,
        KeyCode::PageDown => V::PageDown,
        KeyCode::Home | KeyCode::Char('g') => V::Top,
        KeyCode::End | KeyCode::Char('G') => V::Bottom,
        KeyCode::Left | KeyCode::Char('<') => V::SortPrevious,
        KeyCode::Right | KeyCode::Char('>') => V::SortNext,
        KeyCode::Char('r') => V::SortReverse,
        KeyCode::Char(' ') => V::TogglePause,
        KeyCode::Tab | KeyCode::BackTab => V::SwitchPane,
        KeyCode::Enter => V::Open,
        KeyCode::Char('F') => V::Follow,
        KeyCode::Char('p') => V::ToggleGrouping,
        KeyCode::Char('o') => V::ToggleOwners,
        KeyCode::Char('t') => V::ToggleTcp,
        KeyCode::Char('n') => V::ToggleNames,
        KeyCode::Char('c') => V::ToggleLinger,
        _ => return None,
    })
}

/// Typing a filter: characters go into it; arrows still move the selection.
fn filter_line(code: KeyCode, control: bool) -> Option<V> {
    Some(match code {
        KeyCode::Char('u') if control => V::FilterClear,
        _ if control => return None,
        KeyCode::Char(c) => V::FilterChar(c),
        KeyCode::Backspace => V::FilterBackspace,
        KeyCode::Enter => V::FilterDone,
        KeyCode::Esc => V::FilterCancel,
        KeyCode::Up => V::Up,
        KeyCode::Down => V::Down,
        KeyCode::PageUp => V::PageUp,
        KeyCode::PageDown => V::PageDown,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use crossterm::event::KeyEventState;

    use super::*;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent {
            code,
            modifiers,
            kind: KeyEventKind::Press,
            state: KeyEventState::NONE,
        }
    }

    fn normal_key(code: KeyCode) -> Option<Action> {
        action_for(press(code, KeyModifiers::NONE), KeyMode::Normal)
    }

    #[test]
    fn quit_keys() {
        assert_eq!(normal_key(KeyCode::Char('q')), Some(Action::Quit));
        for mode in [KeyMode::Normal, KeyMode::Filter, KeyMode::Help] {
            assert_eq!(
                action_for(press(KeyCode::Char('c'), KeyModifiers::CONTROL), mode),
                Some(Action::Quit)
            );
        }
        assert_eq!(
            action_for(
                press(KeyCode::Char('x'), KeyModifiers::CONTROL),
                KeyMode::Normal
            ),
            None
        );
    }

    #[test]
    fn releases_are_ignored() {
        let mut key = press(KeyCode::Char('q'), KeyModifiers::NONE);
        key.kind = KeyEventKind::Release;
        assert_eq!(action_for(key, KeyMode::Normal), None);
        key.kind = KeyEventKind::Repeat;
        assert_eq!(action_for(key, KeyMode::Normal), None);
    }

    #[test]
    fn navigation_and_sorting_keys() {
        let view = |code| {
            normal_key(code).and_then(|a| match a {
                Action::View(v) => Some(v),
                _ => None,
            })
        };
        assert_eq!(view(KeyCode::Char('j')), Some(V::Down));
        assert_eq!(view(KeyCode::Char('k')), Some(V::Up));
        assert_eq!(view(KeyCode::PageDown), Some(V::PageDown));
        assert_eq!(view(KeyCode::End), Some(V::Bottom));
        assert_eq!(view(KeyCode::Char('<')), Some(V::SortPrevious));
        assert_eq!(view(KeyCode::Right), Some(V::SortNext));
        assert_eq!(view(KeyCode::Char('r')), Some(V::SortReverse));
        assert_eq!(view(KeyCode::Char(' ')), Some(V::TogglePause));
        assert_eq!(view(KeyCode::Enter), Some(V::Open));
        assert_eq!(view(KeyCode::Char('F')), Some(V::Follow));
        assert_eq!(view(KeyCode::Char('?')), Some(V::ToggleHelp));
        assert_eq!(view(KeyCode::Char('x')), None);
        // Shifted characters arrive with SHIFT; they still count.
        assert_eq!(
            action_for(
                press(KeyCode::Char('>'), KeyModifiers::SHIFT),
                KeyMode::Normal
            ),
            Some(Action::View(V::SortNext))
        );
    }

    #[test]
    fn the_filter_line_takes_characters() {
        let typed = |code| action_for(press(code, KeyModifiers::NONE), KeyMode::Filter);
        assert_eq!(
            typed(KeyCode::Char('q')),
            Some(Action::View(V::FilterChar('q')))
        );
        assert_eq!(
            typed(KeyCode::Char(' ')),
            Some(Action::View(V::FilterChar(' ')))
        );
        assert_eq!(typed(KeyCode::Esc), Some(Action::View(V::FilterCancel)));
        assert_eq!(typed(KeyCode::Enter), Some(Action::View(V::FilterDone)));
        assert_eq!(typed(KeyCode::F(5)), None);
    }

    #[test]
    fn help_closes_with_esc_and_ignores_the_rest() {
        let help = |code| action_for(press(code, KeyModifiers::NONE), KeyMode::Help);
        assert_eq!(help(KeyCode::Esc), Some(Action::View(V::ToggleHelp)));
        assert_eq!(help(KeyCode::Char('j')), None);
        assert_eq!(help(KeyCode::Char('q')), Some(Action::Quit));
    }
}
