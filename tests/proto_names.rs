//! The proto's names are usable from every language's generated code: no
//! field is named after a keyword of a language people generate clients in.

use prost::Message;
use prost_types::FileDescriptorSet;

/// Keywords of Python, JavaScript/TypeScript, Go, Java, C# and Swift that a
/// field name could plausibly take.
const KEYWORDS: &[&str] = &[
    "and",
    "as",
    "async",
    "await",
    "break",
    "case",
    "catch",
    "class",
    "const",
    "continue",
    "default",
    "def",
    "del",
    "delete",
    "do",
    "elif",
    "else",
    "enum",
    "except",
    "export",
    "extends",
    "final",
    "finally",
    "for",
    "from",
    "func",
    "function",
    "global",
    "go",
    "if",
    "import",
    "in",
    "interface",
    "is",
    "lambda",
    "let",
    "new",
    "nonlocal",
    "not",
    "or",
    "package",
    "pass",
    "private",
    "protected",
    "public",
    "raise",
    "return",
    "static",
    "struct",
    "super",
    "switch",
    "this",
    "throw",
    "try",
    "type",
    "var",
    "void",
    "while",
    "with",
    "yield",
];

#[test]
fn no_field_is_named_after_a_keyword() {
    let set = FileDescriptorSet::decode(meshtalk::proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut fields = 0;
    for file in &set.file {
        for message in &file.message_type {
            for field in &message.field {
                let name = field.name();
                fields += 1;
                assert!(
                    !KEYWORDS.contains(&name),
                    "{}.{name} is a keyword somewhere",
                    message.name()
                );
            }
        }
    }
    assert!(fields > 50, "the descriptor set was read: {fields} fields");
}

#[test]
fn a_message_names_its_sender_and_a_send_error_its_code_by_name() {
    let set = FileDescriptorSet::decode(meshtalk::proto::FILE_DESCRIPTOR_SET).unwrap();
    let file = &set.file[0];
    let message = |name: &str| {
        file.message_type
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no message {name}"))
    };
    let sender = message("Message")
        .field
        .iter()
        .find(|f| f.number() == 2)
        .unwrap();
    assert_eq!(sender.name(), "sender");
    let code = message("SendError")
        .field
        .iter()
        .find(|f| f.name() == "code")
        .unwrap();
    assert_eq!(code.type_name(), ".meshtalk.v1.ErrorCode");
}
