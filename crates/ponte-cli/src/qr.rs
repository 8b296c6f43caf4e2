//! QR codes drawn with Unicode characters for the terminal (the share links
//! of `ponte proxy link`).
//!
//! The code uses half blocks (`▀`, `▄`, `█`), two module rows per text
//! line, with the standard 4-module quiet zone. [`Theme::DarkTerminal`]
//! draws the *light* modules (and the quiet zone) with the terminal's
//! foreground colour and leaves dark modules as spaces, so the code has the
//! right polarity on the usual light-on-dark terminal;
//! [`Theme::LightTerminal`] does the reverse for dark-on-light terminals. No
//! colour escapes are written, so the output also survives logs and
//! copy-paste.

use qrcode::types::{Color, QrError};
use qrcode::QrCode;

/// Modules of light margin around the QR code (the standard's minimum).
pub const QUIET_ZONE: usize = 4;

/// Longest text [`draw`] tries to encode; longer input is refused without
/// work (a QR code holds at most 2953 bytes, fewer at the error correction
/// level used).
pub const MAX_QR_TEXT: usize = 2953;

/// Which modules the terminal's foreground colour draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Theme {
    /// Light text on a dark background (the usual console): light modules
    /// are drawn as blocks, dark modules are left blank.
    #[default]
    DarkTerminal,
    /// Dark text on a light background: dark modules are drawn as blocks.
    LightTerminal,
}

/// Draws `text` as a QR code (error correction level M) with Unicode half
/// blocks: each line of the result holds two rows of modules, each character
/// one column; a [`QUIET_ZONE`]-module light margin surrounds the code. Every
/// line ends with `\n`.
///
/// # Errors
///
/// [`QrError::DataTooLong`] (or another [`QrError`]) if the text does not
/// fit in a QR code.
pub fn draw(text: &str, theme: Theme) -> Result<String, QrError> {
    if text.len() > MAX_QR_TEXT {
        return Err(QrError::DataTooLong);
    }
    let code = QrCode::new(text.as_bytes())?;
    let width = code.width();
    let colors = code.to_colors();
    let side = width + 2 * QUIET_ZONE;
    let drawn_color = match theme {
        Theme::DarkTerminal => Color::Light,
        Theme::LightTerminal => Color::Dark,
    };
    // Whether the module at (x, y) of the padded square is drawn; rows past
    // the square (the lower half of the last line when `side` is odd) are
    // left to the terminal's background.
    let drawn = |x: usize, y: usize| -> bool {
        if y >= side {
            return false;
        }
        let inside = (QUIET_ZONE..QUIET_ZONE + width).contains(&x)
            && (QUIET_ZONE..QUIET_ZONE + width).contains(&y);
        let color = if inside {
            colors
                .get((y - QUIET_ZONE) * width + (x - QUIET_ZONE))
                .copied()
                .unwrap_or(Color::Light)
        } else {
            Color::Light
        };
        color == drawn_color
    };
    let lines = side.div_ceil(2);
    let mut out = String::with_capacity(lines * (side * 3 + 1));
    for line in 0..lines {
        let (top, bottom) = (2 * line, 2 * line + 1);
        for x in 0..side {
            out.push(match (drawn(x, top), drawn(x, bottom)) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ponte_wire::link::whatsapp_link;

    /// Reads a rendering back into a matrix of drawn/not drawn modules.
    fn read_back(rendered: &str, side: usize) -> Vec<Vec<bool>> {
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines.len(), side.div_ceil(2));
        assert!(rendered.ends_with('\n'));
        let mut rows = vec![vec![false; side]; 2 * lines.len()];
        for (i, line) in lines.iter().enumerate() {
            let chars: Vec<char> = line.chars().collect();
            assert_eq!(chars.len(), side, "line {i}");
            for (x, ch) in chars.into_iter().enumerate() {
                let (top, bottom) = match ch {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected {other:?}"),
                };
                rows[2 * i][x] = top;
                rows[2 * i + 1][x] = bottom;
            }
        }
        rows
    }

    fn check_against_qrcode(text: &str, theme: Theme) {
        let rendered = draw(text, theme).unwrap();
        let code = QrCode::new(text.as_bytes()).unwrap();
        let width = code.width();
        let colors = code.to_colors();
        let side = width + 2 * QUIET_ZONE;
        let rows = read_back(&rendered, side);
        let drawn_color = match theme {
            Theme::DarkTerminal => Color::Light,
            Theme::LightTerminal => Color::Dark,
        };
        for (y, row) in rows.iter().enumerate() {
            for (x, &drawn) in row.iter().enumerate() {
                let expected = if y >= side {
                    false // past the square: terminal background
                } else if x < QUIET_ZONE
                    || y < QUIET_ZONE
                    || x >= QUIET_ZONE + width
                    || y >= QUIET_ZONE + width
                {
                    drawn_color == Color::Light // the quiet zone is light
                } else {
                    colors[(y - QUIET_ZONE) * width + (x - QUIET_ZONE)] == drawn_color
                };
                assert_eq!(drawn, expected, "module ({x}, {y}) of {text:?}");
            }
        }
    }

    #[test]
    fn qr_matches_qrcode_modules_both_themes() {
        let link = whatsapp_link("proxy.example.org", 443, 587, true);
        for text in [link.as_str(), "x", &"ponte ".repeat(100)] {
            check_against_qrcode(text, Theme::DarkTerminal);
            check_against_qrcode(text, Theme::LightTerminal);
        }
    }

    #[test]
    fn qr_dimensions_and_polarity() {
        let link = whatsapp_link("proxy.example.org", 443, 587, true);
        let dark = draw(&link, Theme::DarkTerminal).unwrap();
        let width = QrCode::new(link.as_bytes()).unwrap().width();
        let side = width + 2 * QUIET_ZONE;
        assert_eq!(dark.lines().count(), side.div_ceil(2));
        assert!(dark.lines().all(|l| l.chars().count() == side));
        // Dark terminal: the quiet zone is drawn, so the first line is all
        // full blocks; light terminal: it is blank.
        let first = dark.lines().next().unwrap();
        assert!(first.chars().all(|c| c == '█'));
        let light = draw(&link, Theme::LightTerminal).unwrap();
        assert!(light.lines().next().unwrap().chars().all(|c| c == ' '));
        assert_ne!(dark, light);
    }

    #[test]
    fn qr_refuses_text_that_does_not_fit() {
        let huge = "a".repeat(MAX_QR_TEXT + 1);
        assert_eq!(draw(&huge, Theme::DarkTerminal), Err(QrError::DataTooLong));
        // Under the byte cap but over level M's capacity: qrcode refuses.
        let big = "\u{7f}".repeat(2400);
        assert_eq!(draw(&big, Theme::DarkTerminal), Err(QrError::DataTooLong));
    }
}
