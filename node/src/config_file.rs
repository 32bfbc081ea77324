//! `--config FILE.toml` for `serve`: every flag is a key (its long name,
//! `max-connections` or `max_connections`), and a value given on the
//! command line or in the environment wins over the file, which wins over
//! the default. Unknown keys are errors. The file's values go through the
//! same parser as the flags (clap's), so they are checked the same way.
//!
//! `config example` prints every key of `serve` with its help as comments
//! and its default: generated from the flags, so it is never out of date.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The flag that names the file (and its environment variable).
pub const FLAG: &str = "config";

/// What the example says of a key with no default.
pub const NOT_SET: &str = "not set by default";

/// Flags that are not keys: the file itself, and clap's own.
fn is_key(arg: &clap::Arg) -> bool {
    arg.get_long().is_some_and(|l| l != FLAG)
        && !arg.is_hide_set()
        && !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
}

/// The command line with the file's values added for every flag that was
/// neither on the command line nor in the environment. `serve` is the
/// subcommand's definition and `matches` what a first parse of `argv` gave
/// for it.
pub fn merged_argv(argv: Vec<OsString>, serve: &Command, matches: &ArgMatches, file: &Path) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading the config file {}", file.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", file.display()))?;
    let mut argv = argv;
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = serve.get_arguments().find(|a| is_key(a) && a.get_long() == Some(long.as_str())) else {
            bail!(
                "unknown key `{key}` in {} (keys are the flags of `serve`; `config example` lists them)",
                file.display()
            );
        };
        let id = arg.get_id().as_str();
        if matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let flag = format!("--{long}");
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for v in values {
            match (v, is_switch) {
                (toml::Value::Boolean(true), true) => argv.push(flag.clone().into()),
                (toml::Value::Boolean(false), true) => {}
                (_, true) => bail!("`{key}` in {} is a switch: true or false", file.display()),
                (toml::Value::String(s), false) => argv.push(format!("{flag}={s}").into()),
                (toml::Value::Integer(n), false) => argv.push(format!("{flag}={n}").into()),
                (toml::Value::Float(x), false) => argv.push(format!("{flag}={x}").into()),
                (toml::Value::Boolean(b), false) => argv.push(format!("{flag}={b}").into()),
                (other, false) => {
                    bail!(
                        "`{key}` in {} must be a string, number or list of them, not {}",
                        file.display(),
                        other.type_str()
                    )
                }
            }
        }
    }
    Ok(argv)
}

/// `config …`: the config-file subcommand of both binaries.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub op: ConfigOp,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigOp {
    /// Print a commented example config file: every key of `serve`, its
    /// help and its default (commented out).
    Example,
}

/// [`example`] for the subcommand `serve` of the program `P`.
pub fn example_of<P: clap::CommandFactory>(serve: &str) -> String {
    let cli = P::command();
    let name = cli.get_name().to_owned();
    let serve = cli.find_subcommand(serve).cloned().unwrap_or_default();
    example(&name, &serve)
}

/// A commented example file for `serve`: each key with its help and its
/// default, commented out (uncommented, it sets the defaults).
pub fn example(program: &str, serve: &Command) -> String {
    let mut out = format!(
        "# {program} serve --config FILE.toml\n\
         #\n\
         # Every flag of `{program} serve` is a key (without the leading --).\n\
         # Precedence: a flag on the command line, then its environment variable,\n\
         # then this file, then the default. Unknown keys are errors.\n"
    );
    for arg in serve.get_arguments().filter(|a| is_key(a)) {
        let long = arg.get_long().unwrap_or_default();
        out.push('\n');
        let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
        for line in wrap(&help, 76) {
            let _ = writeln!(out, "# {line}");
        }
        if let Some(env) = arg.get_env() {
            let _ = writeln!(out, "# (environment: {})", env.to_string_lossy());
        }
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let value = match (arg.get_action(), defaults.as_slice()) {
            (ArgAction::SetTrue, _) => "false".to_owned(),
            (ArgAction::Append, []) => "[]".to_owned(),
            (_, [one]) => toml_value(one),
            (_, []) => {
                let name = arg.get_value_names().and_then(|n| n.first()).map_or("VALUE".to_owned(), |n| n.to_string());
                format!("<{name}>   ({NOT_SET})")
            }
            (_, many) => format!("[{}]", many.iter().map(|v| toml_value(v)).collect::<Vec<_>>().join(", ")),
        };
        let _ = writeln!(out, "# {long} = {value}");
    }
    out
}

/// A default as TOML: numbers and booleans bare, the rest quoted.
fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok_and(f64::is_finite) || v == "true" || v == "false" {
        v.to_owned()
    } else {
        format!("{:?}", v)
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

/// Parses `argv` as `P`, then again with `--config`'s file merged in when
/// `serve` (the subcommand named `subcommand`) was given one.
pub fn parse<P: clap::Parser>(argv: Vec<OsString>, subcommand: &str) -> Result<P, clap::Error> {
    let command = P::command();
    let matches = command.clone().try_get_matches_from(&argv)?;
    let Some(serve_matches) = matches.subcommand_matches(subcommand) else { return P::from_arg_matches(&matches) };
    let Some(file) = serve_matches.get_one::<std::path::PathBuf>(FLAG).cloned() else {
        return P::from_arg_matches(&matches);
    };
    let Some(serve) = command.find_subcommand(subcommand) else { return P::from_arg_matches(&matches) };
    let merged = merged_argv(argv, serve, serve_matches, &file)
        .map_err(|e| P::command().error(clap::error::ErrorKind::InvalidValue, format!("{e:#}")))?;
    P::try_parse_from(merged)
}
