//! The command line: a subcommand and its few options.

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Mark(u32),
    Power { reboot: bool, code: u8 },
    TimeSync,
    Watch { interval_ms: u32 },
    Log(String),
    Heartbeat { interval_ms: u32 },
    Version,
}

/// Printed after an argument error.
pub const USAGE: &str = "usage: plainvm-guest mark <stage> | poweroff [--code N] | reboot [--code N] | time-sync |\n       watch [--interval MS] | log <text...> | heartbeat [--interval MS] | version";

/// Errors in the arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("no command given")]
    Missing,
    #[error("unknown command '{0}'")]
    Unknown(String),
    #[error("unknown stage '{0}': use init, userspace, ready, shutdown or a number")]
    Stage(String),
    #[error("{0} wants a number in {1}, got '{2}'")]
    Number(&'static str, &'static str, String),
    #[error("unexpected argument '{0}'")]
    Extra(String),
    #[error("log: give the text to log")]
    NoText,
}

/// Parse `args` (without the program name).
pub fn parse(args: &[String]) -> Result<Command, ArgsError> {
    let (cmd, rest) = args.split_first().ok_or(ArgsError::Missing)?;
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    Ok(match cmd.as_str() {
        "mark" => match rest[..] {
            [s] => Command::Mark(
                plainvm_guest_proto::stage::parse(s).ok_or_else(|| ArgsError::Stage(s.into()))?,
            ),
            _ => return Err(ArgsError::Stage(rest.join(" "))),
        },
        "poweroff" | "reboot" => Command::Power {
            reboot: cmd == "reboot",
            code: option(&rest, "--code", 0, 0, 255)? as u8,
        },
        "time-sync" => {
            option(&rest, "", 0, 0, 0)?;
            Command::TimeSync
        }
        "watch" => Command::Watch {
            interval_ms: option(&rest, "--interval", 1000, 20, 60_000)?,
        },
        "heartbeat" => Command::Heartbeat {
            interval_ms: option(&rest, "--interval", 10_000, 0, u32::MAX)?,
        },
        "log" if rest.is_empty() => return Err(ArgsError::NoText),
        "log" => Command::Log(rest.join(" ")),
        "version" => {
            option(&rest, "", 0, 0, 0)?;
            Command::Version
        }
        other => return Err(ArgsError::Unknown(other.into())),
    })
}

/// `[name N]` with N in `min..=max`, or `default`; anything else is an error.
fn option(
    rest: &[&str],
    name: &'static str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ArgsError> {
    match rest {
        [] => Ok(default),
        [n, v] if *n == name => v
            .parse::<u32>()
            .ok()
            .filter(|x| (min..=max).contains(x))
            .ok_or_else(|| ArgsError::Number(name, range_text(min, max), (*v).into())),
        [x, ..] => Err(ArgsError::Extra((*x).into())),
    }
}

fn range_text(min: u32, max: u32) -> &'static str {
    match (min, max) {
        (0, 255) => "0..255",
        (20, 60_000) => "20..60000",
        _ => "range",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, ArgsError> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn parses_each_command_and_refuses_bad_input() {
        assert_eq!(p("mark ready"), Ok(Command::Mark(3)));
        assert_eq!(p("mark 77"), Ok(Command::Mark(77)));
        assert!(matches!(p("mark soon"), Err(ArgsError::Stage(_))));
        assert_eq!(
            p("poweroff --code 3"),
            Ok(Command::Power {
                reboot: false,
                code: 3
            })
        );
        assert_eq!(
            p("reboot"),
            Ok(Command::Power {
                reboot: true,
                code: 0
            })
        );
        assert!(matches!(
            p("poweroff --code 256"),
            Err(ArgsError::Number(..))
        ));
        assert!(matches!(p("poweroff --cod 1"), Err(ArgsError::Extra(_))));
        assert_eq!(p("time-sync"), Ok(Command::TimeSync));
        assert!(p("time-sync now").is_err());
        assert_eq!(p("watch"), Ok(Command::Watch { interval_ms: 1000 }));
        assert!(p("watch --interval 1").is_err());
        assert_eq!(p("log a  b"), Ok(Command::Log("a b".into())));
        assert_eq!(p("log"), Err(ArgsError::NoText));
        assert_eq!(p(""), Err(ArgsError::Missing));
        assert!(matches!(p("fly"), Err(ArgsError::Unknown(_))));
    }
}
