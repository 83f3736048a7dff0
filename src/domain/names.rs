//! One spelling per enum value.
//!
//! [`named_enum!`] declares a domain enum whose every variant has one
//! lower-case name: the name the JSON API and the CLI accept and print, the
//! text stored in `text` columns (`alert_rules.metric`, `api_keys.scope`, …),
//! and the value of Prometheus labels. `ALL`, [`as_str`](crate::domain) and
//! `parse` come from that one list, so adding a variant is one line here and
//! the compiler points at every `match` that must learn it. The gRPC enums
//! are converted in `grpc/convert.rs`; SQL never depends on their numbers.

/// Declares `enum $name { $variant = "name", … }` with `ALL`, `as_str`,
/// `parse`, `names` ("a, b or c", for error messages) and `Display`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's one spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value spelled `text`, if any.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Every spelling, as "a, b or c".
            pub fn names() -> String {
                $crate::domain::names::join(Self::ALL.iter().map(|v| v.as_str()))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// "a", "a or b", "a, b or c".
pub fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    named_enum! {
        enum Colour {
            Red = "red",
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn every_value_has_one_spelling_both_ways() {
        for c in Colour::ALL {
            assert_eq!(Colour::parse(c.as_str()), Some(*c));
        }
        assert_eq!(Colour::parse("Red"), None);
        assert_eq!(Colour::names(), "red or dark_blue");
        assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
        assert_eq!(super::join(["a", "b", "c"].into_iter()), "a, b or c");
    }
}
