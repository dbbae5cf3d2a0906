//! Printing for people and machines: aligned tables, colour only on a
//! terminal, JSON on standard output.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// ANSI colours used by the commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Red,
    Green,
    Yellow,
    Cyan,
    Bold,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::Red => "31",
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Cyan => "36",
            Color::Bold => "1",
        }
    }
}

/// Whether to colour: only when standard output is a terminal, `NO_COLOR` is
/// not set and `TERM` is not `dumb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paint(pub bool);

impl Paint {
    /// For standard output.
    pub fn stdout() -> Paint {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Paint(std::io::stdout().is_terminal() && !no_color && !dumb)
    }

    pub fn paint(self, color: Option<Color>, text: &str) -> String {
        match color {
            Some(c) if self.0 && !text.is_empty() => format!("\x1b[{}m{text}\x1b[0m", c.code()),
            _ => text.to_string(),
        }
    }
}

/// The colour of a status as `status` shows it.
pub fn status_color(status: &str) -> Option<Color> {
    match status {
        "applied" => Some(Color::Green),
        "pending" | "deleting" => Some(Color::Yellow),
        "error" | "invalid" | "conflict" | "unknown" => Some(Color::Red),
        _ => None,
    }
}

/// One cell of a table: its text and, on a terminal, its colour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub color: Option<Color>,
}

impl Cell {
    pub fn plain(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            color: None,
        }
    }

    pub fn colored(text: impl Into<String>, color: Option<Color>) -> Cell {
        Cell {
            text: text.into(),
            color,
        }
    }
}

/// A table with a header row, columns aligned on the widest cell (counted in
/// characters, colour codes excluded), separated by three spaces; the last
/// column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<Cell>], paint: Paint) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.text.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<Cell> = headers
        .iter()
        .map(|h| Cell::colored(*h, Some(Color::Bold)))
        .collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            line.push_str(&paint.paint(cell.color, &cell.text));
            if i + 1 < columns {
                let pad = widths[i] - cell.text.chars().count() + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prints `value` as pretty JSON on standard output.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => emit(&format!("{text}\n")),
        Err(e) => eprintln!("svc-handler: cannot print JSON: {e}"),
    }
}

/// The exit status after standard output's reader went away: 128 + SIGPIPE,
/// what a shell reports for other Unix tools in the same place.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Writes `text` to standard output. When the reader has gone away
/// (`svc-handler wait ... | head -1`), the program ends at once and quietly
/// with [`BROKEN_PIPE_EXIT`], as other Unix tools do, instead of panicking
/// as `println!` would.
pub fn emit(text: &str) {
    emit_bytes(text.as_bytes());
}

/// [`emit`] for bytes.
pub fn emit_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        eprintln!("svc-handler: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`emit`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::commands::output::emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// How long ago an RFC 3339 time was, as `5s`, `3m`, `2h`, `4d`; `None` when
/// it does not parse.
pub fn age(rfc3339: &str, now: SystemTime) -> Option<Duration> {
    let then = humantime::parse_rfc3339(rfc3339).ok()?;
    Some(now.duration_since(then).unwrap_or(Duration::ZERO))
}

/// An age in one unit, as kubectl shows it.
pub fn short_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `text` on one line (Consul's multi-line error lists joined, see
/// [`crate::consul::one_line`]), at most `max` characters: a longer one
/// loses its middle, not its end, since a message names the operation first
/// and the cause last (`config.cas: Consul answered 400: … invalid config
/// key "Protocl"`).
pub fn one_line(text: &str, max: usize) -> String {
    let line = crate::consul::one_line(text);
    let n = line.chars().count();
    if n <= max {
        return line;
    }
    let head = max / 3;
    let tail = max.saturating_sub(head + 1);
    let start: String = line.chars().take(head).collect();
    let end: String = line.chars().skip(n - tail).collect();
    format!("{}…{}", start.trim_end(), end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_without_colour_codes() {
        let rows = vec![
            vec![
                Cell::plain("web"),
                Cell::colored("applied", Some(Color::Green)),
                Cell::plain("ok"),
            ],
            vec![
                Cell::plain("a-much-longer-name"),
                Cell::colored("error", Some(Color::Red)),
                Cell::plain(""),
            ],
        ];
        let plain = table(&["NAME", "STATUS", "MESSAGE"], &rows, Paint(false));
        assert_eq!(
            plain,
            "NAME                 STATUS    MESSAGE\n\
             web                  applied   ok\n\
             a-much-longer-name   error\n"
        );
        let colored = table(&["NAME", "STATUS", "MESSAGE"], &rows, Paint(true));
        assert!(
            colored.contains("\x1b[32mapplied\x1b[0m   ok"),
            "{colored:?}"
        );
        let stripped = colored
            .replace("\x1b[32m", "")
            .replace("\x1b[31m", "")
            .replace("\x1b[1m", "")
            .replace("\x1b[0m", "");
        assert_eq!(stripped, plain);
    }

    #[test]
    fn ages() {
        let now = humantime::parse_rfc3339("2026-01-01T01:00:00Z").unwrap();
        assert_eq!(
            age("2026-01-01T00:59:30.250Z", now),
            Some(Duration::from_millis(29_750))
        );
        assert_eq!(age("yesterday", now), None);
        assert_eq!(age("2026-01-01T02:00:00Z", now), Some(Duration::ZERO));
        assert_eq!(short_age(Duration::from_secs(42)), "42s");
        assert_eq!(short_age(Duration::from_secs(600)), "10m");
        assert_eq!(short_age(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(short_age(Duration::from_secs(5 * 86_400)), "5d");
    }

    #[test]
    fn messages_on_one_line() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("0123456789abcdef", 10), "012…abcdef");
        assert_eq!(one_line("a\nb", 10), "a; b");
        let consul = "config.cas: Consul answered 400: Bad request: Request decoding failed: \
                      1 error occurred:\n\t* invalid config key \"Protocl\"\n\n";
        let shown = one_line(consul, 60);
        assert!(shown.starts_with("config.cas"), "{shown}");
        assert!(
            shown.ends_with(r#"invalid config key "Protocl""#),
            "{shown}"
        );
        assert!(shown.chars().count() <= 60, "{shown}");
    }

    #[test]
    fn statuses_have_colours() {
        assert_eq!(status_color("applied"), Some(Color::Green));
        assert_eq!(status_color("pending"), Some(Color::Yellow));
        assert_eq!(status_color("conflict"), Some(Color::Red));
        assert_eq!(Paint(false).paint(Some(Color::Red), "x"), "x");
    }
}
