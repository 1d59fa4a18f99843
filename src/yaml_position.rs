//! Positions of YAML nodes by path (`nodes[1].address`), so validation errors found after serde
//! has done its work (in inventories and playbooks) can still name file:line:column. serde_yaml keeps no spans for values;
//! yaml-rust2's event parser does, and this module only walks its events.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the inventory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Path → position of the value at that path (for mapping values, the value's first token).
#[derive(Debug, Default)]
pub struct Positions {
    values: HashMap<String, Position>,
}

impl Positions {
    /// Index every node of a YAML document. Unparseable text gives an empty index: serde_yaml
    /// reports syntax errors with their own positions before this is ever consulted.
    pub fn index(text: &str) -> Positions {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return Positions::default();
        }
        Positions {
            values: walker.values,
        }
    }

    /// The position of `path`, or of its nearest ancestor that exists (a missing key is reported
    /// where its parent mapping starts).
    pub fn find(&self, path: &str) -> Position {
        let mut candidate = path;
        loop {
            if let Some(position) = self.values.get(candidate) {
                return *position;
            }
            match candidate.rfind(['.', '[']) {
                Some(cut) => candidate = &candidate[..cut],
                None => {
                    return self
                        .values
                        .get("")
                        .copied()
                        .unwrap_or(Position { line: 1, column: 1 })
                }
            }
        }
    }
}

/// One open collection while walking: a mapping waiting for a key or a value, or a sequence
/// counting its items.
#[derive(Debug)]
enum Frame {
    Mapping {
        path: String,
        pending_key: Option<String>,
    },
    Sequence {
        path: String,
        next_index: usize,
    },
}

#[derive(Debug, Default)]
struct Walker {
    stack: Vec<Frame>,
    values: HashMap<String, Position>,
}

impl Walker {
    /// The path of the node that starts now, advancing the parent's state. `None` when the
    /// node is a mapping key.
    fn path_of_next_node(&mut self, key_text: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, next_index }) => {
                let child = format!("{path}[{next_index}]");
                *next_index += 1;
                Some(child)
            }
            Some(Frame::Mapping { path, pending_key }) => match pending_key.take() {
                Some(key) => Some(if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                }),
                None => {
                    // This node is a key; remember its text so its value gets the path.
                    *pending_key = Some(key_text.unwrap_or("?").to_string());
                    None
                }
            },
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        self.values.entry(path.to_string()).or_insert(Position {
            line: mark.line(),
            column: mark.col() + 1,
        });
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, ..) => {
                if let Some(path) = self.path_of_next_node(Some(&text)) {
                    self.record(&path, mark);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.path_of_next_node(Some("*alias")) {
                    self.record(&path, mark);
                }
            }
            Event::MappingStart(..) => {
                let path = self.path_of_next_node(None).unwrap_or_default();
                self.record(&path, mark);
                self.stack.push(Frame::Mapping {
                    path,
                    pending_key: None,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.path_of_next_node(None).unwrap_or_default();
                self.record(&path, mark);
                self.stack.push(Frame::Sequence {
                    path,
                    next_index: 0,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "cluster:\n  name: demo\n  ports: {write: 5000, read: 5001}\nnodes:\n  - {name: node1, address: 10.0.0.1}\n  - name: node2\n    address: bad\n";

    #[test]
    fn finds_block_and_flow_values() {
        let positions = Positions::index(TEXT);
        assert_eq!(
            positions.find("cluster.name"),
            Position { line: 2, column: 9 }
        );
        assert_eq!(
            positions.find("cluster.ports.read"),
            Position {
                line: 3,
                column: 30
            }
        );
        assert_eq!(
            positions.find("nodes[0].address"),
            Position {
                line: 5,
                column: 28
            }
        );
        assert_eq!(
            positions.find("nodes[1].address"),
            Position {
                line: 7,
                column: 14
            }
        );
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let positions = Positions::index(TEXT);
        assert_eq!(positions.find("nodes[1].roles"), positions.find("nodes[1]"));
        assert_eq!(positions.find("cluster.vip"), positions.find("cluster"));
    }

    #[test]
    fn garbage_gives_a_usable_default() {
        let positions = Positions::index("a: [unclosed");
        assert_eq!(positions.find("a"), Position { line: 1, column: 1 });
    }
}
