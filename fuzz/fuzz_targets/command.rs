//! The command parser on arbitrary text: a command that parses says itself
//! back as a line that parses to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtalk::codec::line::Command;

fuzz_target!(|line: &str| {
    if line.contains(['\r', '\n']) {
        return;
    }
    if let Ok(Some(command)) = Command::parse(line) {
        assert_eq!(Command::parse(&command.to_line()), Ok(Some(command)));
    }
});
