//! Remote commands as data: what to run, what to feed on stdin, whether it needs root, and the
//! one place that turns that into the command line sshd hands to the login shell. Every word of
//! that line goes through [`shell_quote`]; nothing here talks to the network.

/// A command to run on a host.
#[derive(Debug, Clone)]
pub struct RemoteCommand {
    program: Program,
    stdin: Option<Vec<u8>>,
    as_root: bool,
}

#[derive(Debug, Clone)]
enum Program {
    /// Words run as one simple command, each quoted.
    Argv(Vec<String>),
    /// A POSIX `sh` script run with `sh -c`; `args` become `$1`, `$2`, ...
    Script { script: String, args: Vec<String> },
}

impl RemoteCommand {
    /// Run `argv[0]` with the other words as its arguments, with no shell interpretation.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RemoteCommand {
            program: Program::Argv(argv.into_iter().map(Into::into).collect()),
            stdin: None,
            as_root: false,
        }
    }

    /// Run a (possibly multi-line) POSIX shell script with `sh -c`. Pass data with
    /// [`RemoteCommand::arg`] (it arrives as `$1`, `$2`, ...) rather than formatting it into the
    /// script text.
    pub fn script(script: impl Into<String>) -> Self {
        RemoteCommand {
            program: Program::Script {
                script: script.into(),
                args: Vec::new(),
            },
            stdin: None,
            as_root: false,
        }
    }

    /// Append one argument (an argv word, or the next positional parameter of a script).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        match &mut self.program {
            Program::Argv(words) => words.push(arg.into()),
            Program::Script { args, .. } => args.push(arg.into()),
        }
        self
    }

    /// Bytes to write to the command's stdin (then end-of-file). Secrets go here, never into
    /// arguments: arguments are visible to every user of the host in `ps`.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Run as root: through `sudo -n` when the session's user is not `root`.
    pub fn as_root(mut self) -> Self {
        self.as_root = true;
        self
    }

    /// Whether the command asked to run as root.
    pub fn needs_root(&self) -> bool {
        self.as_root
    }

    /// The bytes to feed on stdin, if any.
    pub fn stdin_bytes(&self) -> Option<&[u8]> {
        self.stdin.as_deref()
    }

    /// A short description for messages: the quoted argv, or the script's first line.
    pub fn summary(&self) -> String {
        match &self.program {
            Program::Argv(words) => join_quoted(words),
            Program::Script { script, .. } => {
                let mut lines = script.lines().map(str::trim).filter(|l| !l.is_empty());
                let first = lines.next().unwrap_or_default();
                let more = if lines.next().is_some() { " …" } else { "" };
                format!("sh -c {}{more}", shell_quote(first))
            }
        }
    }

    /// The exact command line sent in the SSH `exec` request. `sudo` prefixes it with
    /// `sudo -n --`, which never prompts: a password requirement fails at once.
    pub fn command_line(&self, sudo: bool) -> String {
        let body = match &self.program {
            Program::Argv(words) => join_quoted(words),
            Program::Script { script, args } => {
                let mut words = vec!["sh".to_string(), "-c".to_string(), script.clone()];
                // `$0` of the script; the arguments follow as `$1`...
                words.push("sh".to_string());
                words.extend(args.iter().cloned());
                join_quoted(&words)
            }
        };
        if sudo {
            format!("sudo -n -- {body}")
        } else {
            body
        }
    }
}

/// What a finished remote command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when the command was killed by a signal (see `signal`) or the
    /// server did not report one.
    pub exit_code: Option<i32>,
    /// The signal name (`KILL`, `TERM`, ...) when the command died from a signal.
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Stdout as text; invalid UTF-8 is replaced, not an error.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text; invalid UTF-8 is replaced, not an error.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// "exit code 3", "signal KILL" or "no exit status", for messages.
    pub fn status(&self) -> String {
        match (&self.exit_code, &self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "no exit status".to_string(),
        }
    }
}

/// Quote one word for a POSIX shell so that it reaches the command exactly as given. Words made
/// only of characters no shell treats specially are left bare for readable `ps` lines; anything
/// else is wrapped in single quotes, inside which only `'` itself needs care (`'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        return word.to_string();
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

fn join_quoted(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_bare() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(
            shell_quote("/etc/patroni/patroni.yml"),
            "/etc/patroni/patroni.yml"
        );
        assert_eq!(shell_quote("--mode=0640"), "--mode=0640");
    }

    #[test]
    fn hostile_words_are_single_quoted() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("'"), "''\\'''");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_quote("`id`"), "'`id`'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
        assert_eq!(shell_quote("x;rm -rf /"), "'x;rm -rf /'");
        assert_eq!(shell_quote("ünï"), "'ünï'");
        assert_eq!(shell_quote("*"), "'*'");
        assert_eq!(shell_quote("~root"), "'~root'");
        assert_eq!(shell_quote("\\"), "'\\'");
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        let hostile = [
            "",
            "it's",
            "'",
            "''",
            "$(echo pwned)",
            "`echo pwned`",
            "a\nb\n",
            "$HOME ${HOME} \\$x",
            "\"double\" 'single'",
            "ünïcødé ✓ 🐘",
            "-n",
            "*",
            "a\tb  c",
            "!event",
        ];
        for word in hostile {
            let line = format!("printf %s {}", shell_quote(word));
            let output = std::process::Command::new("sh")
                .arg("-c")
                .arg(&line)
                .output()
                .expect("run sh");
            assert_eq!(
                String::from_utf8_lossy(&output.stdout),
                word,
                "via `{line}`"
            );
        }
    }

    #[test]
    fn script_arguments_become_positional_parameters() {
        let command = RemoteCommand::script("printf '%s|' \"$@\"")
            .arg("a b")
            .arg("it's");
        assert_eq!(
            command.command_line(false),
            "sh -c 'printf '\\''%s|'\\'' \"$@\"' sh 'a b' 'it'\\''s'"
        );
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(command.command_line(false))
            .output()
            .expect("run sh");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "a b|it's|");
    }

    #[test]
    fn sudo_prefix_never_prompts() {
        let command = RemoteCommand::argv(["id", "-u"]).as_root();
        assert!(command.needs_root());
        assert_eq!(command.command_line(true), "sudo -n -- id -u");
        assert_eq!(command.command_line(false), "id -u");
    }

    #[test]
    fn summary_shows_the_first_script_line() {
        let command = RemoteCommand::script("\n  set -eu\n  cat /etc/os-release\n");
        assert_eq!(command.summary(), "sh -c 'set -eu' …");
        assert_eq!(RemoteCommand::argv(["echo", "a b"]).summary(), "echo 'a b'");
    }

    #[test]
    fn output_status_text() {
        let mut output = CommandOutput {
            exit_code: Some(3),
            signal: None,
            stdout: b"out\xff".to_vec(),
            stderr: Vec::new(),
        };
        assert_eq!(output.status(), "exit code 3");
        assert!(!output.success());
        assert_eq!(output.stdout_text(), "out\u{fffd}");
        output.exit_code = None;
        output.signal = Some("KILL".to_string());
        assert_eq!(output.status(), "signal KILL");
    }
}
