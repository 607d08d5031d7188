//! Narrowing the table: the `/` filter typed in the dashboard, and the `--pid`, `--comm`,
//! `--port` and `-4`/`-6` scope given on the command line.
//!
//! A filter is words separated by spaces; a socket is shown when it matches every word (so each
//! word narrows). A plain word matches the process name, the host name or `ip:port`
//! (`[::1]:8080` for IPv6; case does not matter); a number matches the pid or a port exactly;
//! `pid:`, `port:`, `comm:`, `host:` and `ip:` pin a word to one field, `unit:` (or `owner:`)
//! matches the owner as shown (`nginx.service`, `docker:3f2a1b2c3d4e`; `unit:=NAME` exactly that
//! one) and `cgroup:` the
//! process's cgroup path, and `:443` means port 443 (`::1` is an address); `health:` keeps sockets with a TCP trouble mark (`health:retrans`,
//! `peer`, `app`, `idle`: that mark). A word that cannot mean anything (`pid:abc`) is ignored
//! and reported, never an error.

use crate::socket::{Families, HealthMark, Process, Socket};

/// Longest filter text kept (characters).
pub const MAX_FILTER_LEN: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    /// Process name, host name or `ip:port`, lowercase.
    Text(String),
    /// Pid or port.
    Number(u32),
    Pid(u32),
    Port(u16),
    Comm(String),
    Host(String),
    Ip(String),
    /// The owner as shown (`unit:nginx`, `unit:docker`, `unit:3f2a`).
    Unit(String),
    /// Exactly this owner (`unit:=nginx.service`): what Enter on an owner's group filters by.
    UnitExact(String),
    /// The cgroup's path (`cgroup:/system.slice`).
    Cgroup(String),
    /// `health:` alone: any trouble (not idle); `health:retrans` and the like: that mark.
    Health(Option<&'static str>),
}

impl Term {
    fn parse(word: &str) -> Result<Self, String> {
        let lower = word.to_lowercase();
        // `:443`, but not `::1` (an IPv6 address, plain text below).
        if let Some(port) = lower
            .strip_prefix(':')
            .filter(|rest| !rest.starts_with(':'))
        {
            return port_number(word, port).map(Self::Port);
        }
        if let Some((field, value)) = lower.split_once(':') {
            let needs_value = || {
                if value.is_empty() {
                    Err(format!("{word} needs a value"))
                } else {
                    Ok(value.to_owned())
                }
            };
            match field {
                "pid" => {
                    return value
                        .parse()
                        .map(Self::Pid)
                        .map_err(|_| format!("{word}: pid is a number"))
                }
                "port" => return port_number(word, value).map(Self::Port),
                "comm" => return needs_value().map(Self::Comm),
                "host" => return needs_value().map(Self::Host),
                "ip" => return needs_value().map(Self::Ip),
                "unit" | "owner" => {
                    return match value.strip_prefix('=') {
                        Some(exact) if !exact.is_empty() => Ok(Self::UnitExact(exact.to_owned())),
                        _ => needs_value().map(Self::Unit),
                    };
                }
                "cgroup" => return needs_value().map(Self::Cgroup),
                "health" => return health_word(word, value).map(Self::Health),
                // `127.0.0.1:8080`, `[::1]:8080`, `fe80::1` and the like: plain text.
                _ => {}
            }
        }
        if !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = lower.parse() {
                return Ok(Self::Number(n));
            }
        }
        Ok(Self::Text(lower))
    }

    fn matches(&self, s: &Socket, host: Option<&str>, process: Option<&Process>) -> bool {
        let has_port = |port: u16| s.dport == port || (s.lport != 0 && s.lport == port);
        let host = || host.unwrap_or_default().to_lowercase();
        match self {
            Self::Text(text) => {
                s.comm.to_lowercase().contains(text.as_str())
                    || host().contains(text.as_str())
                    || s.remote().contains(text.as_str())
            }
            Self::Number(n) => s.pid() == *n || u16::try_from(*n).is_ok_and(has_port),
            Self::Pid(pid) => s.pid() == *pid,
            Self::Port(port) => has_port(*port),
            Self::Comm(comm) => s.comm.to_lowercase().contains(comm.as_str()),
            Self::Host(name) => host().contains(name.as_str()),
            Self::Ip(ip) => s.daddr().to_string().contains(ip.as_str()),
            Self::Unit(unit) => {
                process.is_some_and(|p| p.owner.to_string().to_lowercase().contains(unit.as_str()))
            }
            Self::UnitExact(unit) => {
                process.is_some_and(|p| p.owner.to_string().to_lowercase() == *unit)
            }
            Self::Cgroup(path) => {
                process.is_some_and(|p| p.cgroup.to_lowercase().contains(path.as_str()))
            }
            Self::Health(None) => s.mark.is_some_and(HealthMark::is_trouble),
            Self::Health(Some(word)) => s.mark.is_some_and(|mark| mark.word() == *word),
        }
    }
}

/// The marks `health:` can name (`HealthMark::word`).
const HEALTH_WORDS: [&str; 4] = ["retrans", "peer", "app", "idle"];

fn health_word(word: &str, value: &str) -> Result<Option<&'static str>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    HEALTH_WORDS
        .into_iter()
        .find(|w| *w == value)
        .map(Some)
        .ok_or_else(|| format!("{word}: health is retrans, peer, app or idle"))
}

fn port_number(word: &str, value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| format!("{word}: a port is a number up to 65535"))
}

/// The `/` filter: its text as typed, and what it means.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    text: String,
    terms: Vec<Term>,
    /// Words that were ignored, and why.
    problems: Vec<String>,
}

impl Filter {
    pub fn new(text: &str) -> Self {
        let text: String = text
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_FILTER_LEN)
            .collect();
        let mut terms = Vec::new();
        let mut problems = Vec::new();
        for word in text.split_whitespace() {
            match Term::parse(word) {
                Ok(term) => terms.push(term),
                Err(problem) => problems.push(problem),
            }
        }
        Self {
            text,
            terms,
            problems,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty()
    }

    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn push(&mut self, c: char) {
        if c.is_control() || self.text.chars().count() >= MAX_FILTER_LEN {
            return;
        }
        let mut text = std::mem::take(&mut self.text);
        text.push(c);
        *self = Self::new(&text);
    }

    pub fn pop(&mut self) {
        let mut text = std::mem::take(&mut self.text);
        text.pop();
        *self = Self::new(&text);
    }

    /// Whether `socket` (whose remote end is called `host`, when named, and whose process is
    /// `process`, when read) passes every word.
    pub fn matches(&self, socket: &Socket, host: Option<&str>, process: Option<&Process>) -> bool {
        self.terms
            .iter()
            .all(|term| term.matches(socket, host, process))
    }
}

/// What `--pid`, `--comm`, `--port` and `-4`/`-6` allow: any of the values of each given flag,
/// and every given flag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub pids: Vec<u32>,
    /// Substrings of the process name.
    pub comms: Vec<String>,
    /// Destination or local ports.
    pub ports: Vec<u16>,
    /// Both unless `-4` or `-6`, by the remote end as shown ([`Socket::family`]): a socket of
    /// an IPv6 listener with an IPv4-mapped peer is an IPv4 one.
    pub families: Families,
}

impl Scope {
    pub fn is_everything(&self) -> bool {
        self.pids.is_empty()
            && self.comms.is_empty()
            && self.ports.is_empty()
            && self.families == Families::Both
    }

    pub fn matches(&self, s: &Socket) -> bool {
        self.families.contains(s.family())
            && (self.pids.is_empty() || self.pids.contains(&s.pid()))
            && (self.comms.is_empty() || self.comms.iter().any(|c| s.comm.contains(c.as_str())))
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|&p| s.dport == p || (s.lport != 0 && s.lport == p)))
    }

    /// For the header: `pid 42,43 comm curl port 443`. Not the families: the header always
    /// says those on its own.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let join = |values: Vec<String>| values.join(",");
        if !self.pids.is_empty() {
            parts.push(format!(
                "pid {}",
                join(self.pids.iter().map(u32::to_string).collect())
            ));
        }
        if !self.comms.is_empty() {
            parts.push(format!("comm {}", join(self.comms.clone())));
        }
        if !self.ports.is_empty() {
            parts.push(format!(
                "port {}",
                join(self.ports.iter().map(u16::to_string).collect())
            ));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::socket::SocketKey;

    type Named = (Socket, Option<&'static str>);

    fn socket(pid: u32, comm: &str, ip: [u8; 4], port: u16, host: Option<&'static str>) -> Named {
        let key = SocketKey { pid, fd: 3 };
        (Socket::new(key, 1, Ipv4Addr::from(ip), port, comm), host)
    }

    fn shown<'a>(filter: &str, sockets: &'a [Named]) -> Vec<&'a str> {
        let filter = Filter::new(filter);
        sockets
            .iter()
            .filter(|(s, host)| filter.matches(s, *host, None))
            .map(|(s, _)| s.comm.as_str())
            .collect()
    }

    fn sample() -> Vec<Named> {
        vec![
            socket(100, "curl", [93, 184, 216, 34], 443, Some("example.com")),
            socket(101, "curl", [127, 0, 0, 1], 8080, Some("localhost")),
            socket(443, "Python3", [10, 0, 0, 5], 5432, None),
            socket(102, "wget", [10, 0, 0, 6], 443, None),
        ]
    }

    #[test]
    fn health_words_select_marked_sockets() {
        let mut sockets = sample();
        sockets[0].0.mark = Some(HealthMark::Retransmitting);
        sockets[2].0.mark = Some(HealthMark::AppNotReading);
        sockets[3].0.mark = Some(HealthMark::Idle);
        assert_eq!(shown("health:", &sockets), ["curl", "Python3"]);
        assert_eq!(shown("health:retrans", &sockets), ["curl"]);
        assert_eq!(shown("health:APP", &sockets), ["Python3"]);
        assert_eq!(shown("health:idle", &sockets), ["wget"]);
        assert_eq!(shown("health:peer", &sockets), Vec::<&str>::new());
        let filter = Filter::new("health:slow");
        assert_eq!(
            filter.problems(),
            ["health:slow: health is retrans, peer, app or idle"]
        );
    }

    /// IPv6 rows: a plain word matches `[address]:port`, `ip:` a prefix of the address, and
    /// `::1` is an address, not a port.
    #[test]
    fn ipv6_addresses_are_matched_as_text_and_by_ip() {
        let six = |pid, comm: &str, ip: &str, port| {
            let ip: std::net::Ipv6Addr = ip.parse().unwrap();
            (
                Socket::new(SocketKey { pid, fd: 3 }, 1, ip, port, comm),
                None,
            )
        };
        let mut sockets = sample();
        sockets.push(six(200, "node", "::1", 8080));
        sockets.push(six(201, "java", "fd00::5", 9000));
        let filter = Filter::new("::1");
        assert!(filter.problems().is_empty(), "{:?}", filter.problems());
        assert_eq!(shown("::1", &sockets), ["node"]);
        assert_eq!(shown("[::1]:8080", &sockets), ["node"]);
        assert_eq!(shown("ip:fd00:", &sockets), ["java"]);
        assert_eq!(shown("ip:FD00::5", &sockets), ["java"]);
        assert_eq!(shown(":8080", &sockets), ["curl", "node"]);
        assert_eq!(shown("ip:127.0.0.1", &sockets), ["curl"]);
    }

    #[test]
    fn words_narrow() {
        let sockets = sample();
        assert_eq!(shown("", &sockets).len(), 4);
        assert_eq!(shown("curl", &sockets), ["curl", "curl"]);
        assert_eq!(shown("curl 443", &sockets), ["curl"]);
        assert_eq!(shown("  CURL   443 ", &sockets), ["curl"]);
        assert_eq!(shown("curl 443 nothing", &sockets), Vec::<&str>::new());
    }

    #[test]
    fn numbers_match_pids_and_ports_exactly() {
        let sockets = sample();
        // 443 is wget's and curl's port and python's pid.
        assert_eq!(shown("443", &sockets), ["curl", "Python3", "wget"]);
        assert_eq!(shown("44", &sockets), Vec::<&str>::new());
        assert_eq!(shown("pid:443", &sockets), ["Python3"]);
        assert_eq!(shown("port:443", &sockets), ["curl", "wget"]);
        assert_eq!(shown(":8080", &sockets), ["curl"]);
    }

    #[test]
    fn text_matches_names_hosts_and_addresses() {
        let sockets = sample();
        assert_eq!(shown("python", &sockets), ["Python3"]);
        assert_eq!(shown("example", &sockets), ["curl"]);
        assert_eq!(shown("10.0.0", &sockets), ["Python3", "wget"]);
        assert_eq!(shown("127.0.0.1:8080", &sockets), ["curl"]);
        assert_eq!(shown("host:local", &sockets), ["curl"]);
        assert_eq!(shown("ip:10.0.0.6", &sockets), ["wget"]);
        assert_eq!(shown("comm:wg", &sockets), ["wget"]);
    }

    #[test]
    fn invalid_words_are_ignored_and_reported() {
        let sockets = sample();
        for text in [
            "pid:abc",
            "port:70000",
            "pid:",
            ":x",
            "comm:",
            "pid:-1",
            "99999999999999999999",
        ] {
            let filter = Filter::new(text);
            assert!(
                !filter.problems().is_empty() || filter.terms.len() == 1,
                "{text}"
            );
            // Never a panic; an ignored word narrows nothing.
            let _ = shown(text, &sockets);
        }
        assert_eq!(shown("pid:abc curl", &sockets), ["curl", "curl"]);
        assert_eq!(Filter::new("pid:abc").problems().len(), 1);
        // Control characters are dropped, length is bounded.
        let mut filter = Filter::new("cu\u{1b}[2Jrl");
        assert_eq!(filter.text(), "cu[2Jrl");
        for _ in 0..500 {
            filter.push('x');
        }
        assert_eq!(filter.text().chars().count(), MAX_FILTER_LEN);
        filter.push('\n');
        for _ in 0..1000 {
            filter.pop();
        }
        assert!(filter.is_empty());
    }

    #[test]
    fn scope_allows_any_value_of_each_flag() {
        let sockets = sample();
        let scope = Scope {
            pids: vec![100, 102],
            comms: vec![],
            ports: vec![443],
            families: Families::Both,
        };
        let kept: Vec<u32> = sockets
            .iter()
            .filter(|(s, _)| scope.matches(s))
            .map(|(s, _)| s.pid())
            .collect();
        assert_eq!(kept, [100, 102]);
        assert_eq!(scope.describe(), "pid 100,102 port 443");
        assert!(Scope::default().is_everything());
    }

    /// `-4`/`-6` keep the rows of their family, by the remote end as shown: an IPv4-mapped
    /// peer (an IPv6 listener's IPv4 client) is IPv4.
    #[test]
    fn scope_keeps_the_families_watched() {
        let (v4, _) = socket(100, "curl", [10, 0, 0, 5], 443, None);
        let mut v6 = v4.clone();
        v6.set_daddr(std::net::Ipv6Addr::LOCALHOST);
        let mut mapped = v4.clone();
        mapped.set_daddr(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        let kept = |families| {
            let scope = Scope {
                families,
                ..Scope::default()
            };
            [&v4, &v6, &mapped].map(|s| scope.matches(s))
        };
        assert_eq!(kept(Families::Both), [true, true, true]);
        assert_eq!(kept(Families::Ipv4), [true, false, true]);
        assert_eq!(kept(Families::Ipv6), [false, true, false]);
        // One family is a narrowing the header shows on its own, not in `describe`.
        let six = Scope {
            families: Families::Ipv6,
            ..Scope::default()
        };
        assert!(!six.is_everything());
        assert_eq!(six.describe(), "");
    }

    /// `unit:` matches the owner as shown, `cgroup:` the path; a process not read matches
    /// neither.
    #[test]
    fn unit_and_cgroup_words_match_the_process() {
        let (row, _) = socket(100, "nginx", [10, 0, 0, 5], 443, None);
        let id = "3f2a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef";
        let unit = Process::parse(100, "0::/system.slice/nginx.service\n", "");
        let docker = Process::parse(100, &format!("0::/system.slice/docker-{id}.scope\n"), "");
        let matches = |words: &str, process: Option<&Process>| {
            Filter::new(words).matches(&row, None, process)
        };
        assert!(matches("unit:nginx", Some(&unit)));
        assert!(matches("owner:NGINX.service", Some(&unit)));
        assert!(matches("unit:=nginx.service", Some(&unit)));
        assert!(!matches("unit:=nginx", Some(&unit)), "exact");
        assert!(!matches("unit:nginx", Some(&docker)));
        assert!(matches("unit:docker:3f2a", Some(&docker)));
        assert!(matches("cgroup:/system.slice/docker-3f2a", Some(&docker)));
        assert!(!matches("cgroup:nginx", Some(&docker)));
        assert!(!matches("unit:nginx", None));
        assert_eq!(Filter::new("unit:").problems(), ["unit: needs a value"]);
    }
}
