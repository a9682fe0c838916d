//! The paper's two classes and their one name ↔ id mapping (SPEC §1).
//!
//! Every place that turns a label name into a class id or back uses [`Class`]: the
//! annotation reader (name-only labels), the scorer (the keyframe table's filling and
//! washout), and the commands that write detections. The ids are fixed by the paper's data
//! layout (`vessel.json` gives `filling` id 0 and `washout` id 1, SPEC §2.1) and do not
//! depend on the order in which a file happens to list its labels.

use std::fmt;

/// One of the paper's classes. A config may ask for more classes; those have ids only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Contrast agent flowing in: the segment [start, apex].
    Filling,
    /// Contrast agent washing out: the segment [apex, end].
    Washout,
}

impl Class {
    /// All classes, in id order.
    pub const ALL: [Class; 2] = [Class::Filling, Class::Washout];

    /// The class id (the model's output channel and the files' `label_id`).
    pub const fn id(self) -> usize {
        match self {
            Class::Filling => 0,
            Class::Washout => 1,
        }
    }

    /// The name written in annotation and detection files.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Filling => "filling",
            Class::Washout => "washout",
        }
    }

    /// The class of an id, if it is one of the paper's.
    pub fn from_id(id: usize) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.id() == id)
    }

    /// The class of a name, ignoring ASCII case (`Filling` is `filling`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// The name of a class id: the class's name, or `class <id>` for an id beyond the
    /// paper's classes.
    pub fn name_of(id: usize) -> String {
        Self::from_id(id).map_or_else(|| format!("class {id}"), |c| c.name().to_string())
    }

    /// The names of all classes, in id order, for messages.
    pub fn names() -> [&'static str; 2] {
        Self::ALL.map(Class::name)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_round_trip_and_follow_the_spec() {
        assert_eq!((Class::Filling.id(), Class::Washout.id()), (0, 1));
        assert_eq!(Class::names(), ["filling", "washout"]);
        for c in Class::ALL {
            assert_eq!(Class::from_id(c.id()), Some(c));
            assert_eq!(Class::from_name(c.name()), Some(c));
            assert_eq!(c.to_string(), c.name());
        }
        assert_eq!(Class::from_name("WashOut"), Some(Class::Washout));
        assert_eq!(Class::from_name("filing"), None);
        assert_eq!(Class::from_id(2), None);
        assert_eq!(Class::name_of(1), "washout");
        assert_eq!(Class::name_of(5), "class 5");
    }
}
