//! Helpers for the clap flag groups each layer defines for itself (dialects and carriers own
//! their flags; `config` flattens them into `media-relay serve`).

/// `T` with every flag at its clap default (as `media-relay serve` with no flags would give;
/// the environment is read as for any parse).
///
/// # Panics
/// Only if `T`'s own defaults do not parse, a programming error caught by every test.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults"));
    let matches = cmd
        .try_get_matches_from(["defaults"])
        .expect("flag defaults parse");
    T::from_arg_matches(&matches).expect("flag defaults are valid")
}
