//! Lossless edits of an inventory file: `set`, `unset`, `add-node`, `remove-node`.
//!
//! The file is never re-serialised. yaml-rust2's event parser gives the position of every key,
//! scalar and collection; an edit replaces, inserts or removes exactly the bytes (or, in block
//! style, the lines) of the entry it concerns, in the style the file already uses there (block
//! or flow, quoting, indentation). Every other byte — comments, blank lines, key order, anchors,
//! the `$schema` line — stays as it was. What cannot be edited without touching other bytes
//! (a block scalar, a value behind an alias or a merge key) is refused with the reason.
//!
//! The caller validates the edited text as an inventory before writing it (see
//! `cli::inventory`), so an edit that would make the inventory invalid changes nothing.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One edit of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Set the scalar at a dotted path (`cluster.postgresql.parameters.work_mem`), creating
    /// missing mappings on the way.
    Set { path: String, value: String },
    /// Remove the entry at a dotted path.
    Unset { path: String },
    /// Append a node to `nodes`.
    AddNode {
        name: String,
        address: String,
        roles: Option<Vec<String>>,
        tags: Vec<(String, String)>,
    },
    /// Remove the node called `name` from `nodes`.
    RemoveNode { name: String },
}

/// Why an edit cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EditError {
    pub message: String,
    pub hint: Option<String>,
}

fn refuse(message: impl Into<String>, hint: Option<&str>) -> EditError {
    EditError {
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

/// Apply `edit` to the inventory `text`; the new text.
pub fn apply(text: &str, edit: &Edit) -> Result<String, EditError> {
    let document = Document::parse(text)?;
    match edit {
        Edit::Set { path, value } => document.set(&split_path(path)?, value),
        Edit::Unset { path } => document.unset(&split_path(path)?),
        Edit::AddNode {
            name,
            address,
            roles,
            tags,
        } => document.add_node(name, address, roles.as_deref(), tags),
        Edit::RemoveNode { name } => document.remove_node(name),
    }
}

/// Split a dotted path; a key that holds dots is written in double quotes
/// (`cluster.postgresql.parameters."pg_stat_statements.track"`).
fn split_path(path: &str) -> Result<Vec<String>, EditError> {
    let mut keys = vec![String::new()];
    let mut quoted = false;
    for c in path.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => keys.push(String::new()),
            _ => keys.last_mut().expect("one key at least").push(c),
        }
    }
    if quoted || keys.iter().any(String::is_empty) {
        return Err(refuse(
            format!("`{path}` is not a path"),
            Some("write keys separated by dots, e.g. `cluster.postgresql.parameters.work_mem`; quote a key that holds dots: `parameters.\"pg_stat_statements.track\"`"),
        ));
    }
    if keys[0] == "nodes" {
        return Err(refuse(
            format!("`{path}`: nodes are edited with `add-node` and `remove-node`"),
            Some("to change a node, remove it and add it again"),
        ));
    }
    Ok(keys)
}

/// A YAML node with the byte span it occupies in the source.
#[derive(Debug, Clone)]
enum Node {
    Scalar {
        value: String,
        style: TScalarStyle,
        start: usize,
        end: usize,
        /// Why its end is not known (a block scalar, a plain value over several lines): an
        /// edit that needs it is refused with this reason.
        uneditable: Option<&'static str>,
    },
    Mapping {
        flow: bool,
        start: usize,
        /// For flow mappings, just past the closing `}`.
        end: usize,
        entries: Vec<(Scalar, Node)>,
    },
    Sequence {
        flow: bool,
        start: usize,
        end: usize,
        items: Vec<Node>,
    },
    Alias {
        start: usize,
    },
}

/// A mapping key.
#[derive(Debug, Clone)]
struct Scalar {
    value: String,
    start: usize,
    end: usize,
}

impl Node {
    fn start(&self) -> usize {
        match self {
            Node::Scalar { start, .. }
            | Node::Mapping { start, .. }
            | Node::Sequence { start, .. }
            | Node::Alias { start } => *start,
        }
    }

    fn get(&self, key: &str) -> Option<&(Scalar, Node)> {
        match self {
            Node::Mapping { entries, .. } => entries.iter().find(|(k, _)| k.value == key),
            _ => None,
        }
    }
}

struct Document<'a> {
    text: &'a str,
    /// Byte offset where each line starts.
    lines: Vec<usize>,
    root: Node,
}

/// Builds [`Node`]s from the parser's events.
struct Builder<'a> {
    text: &'a str,
    lines: Vec<usize>,
    stack: Vec<Node>,
    /// Keys waiting for their value, one per open mapping.
    keys: Vec<Option<Scalar>>,
    root: Option<Node>,
    problem: Option<EditError>,
}

impl Builder<'_> {
    /// The byte offset of a marker, from its line and (character) column.
    fn offset(&self, mark: Marker) -> usize {
        let line_start = self
            .lines
            .get(mark.line().saturating_sub(1))
            .copied()
            .unwrap_or(self.text.len());
        let line = &self.text[line_start..];
        line_start
            + line
                .char_indices()
                .nth(mark.col())
                .map_or(line.len(), |(index, _)| index)
    }

    /// Where the key waiting for its value ends, when the next node is a mapping value.
    fn pending_key_end(&self) -> Option<usize> {
        match (self.stack.last(), self.keys.last()) {
            (Some(Node::Mapping { .. }), Some(Some(key))) => Some(key.end),
            _ => None,
        }
    }

    /// Attach a finished node to its parent (or make it the root).
    fn attach(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Node::Sequence { items, .. }) => items.push(node),
            Some(Node::Mapping { entries, .. }) => {
                let slot = self.keys.last_mut().expect("a key slot per open mapping");
                match slot.take() {
                    Some(key) => entries.push((key, node)),
                    None => match node {
                        Node::Scalar {
                            value, start, end, ..
                        } => *slot = Some(Scalar { value, start, end }),
                        _ => {
                            self.problem.get_or_insert(refuse(
                                "the inventory has a mapping key that is not a plain value",
                                None,
                            ));
                        }
                    },
                }
            }
            Some(_) => {}
        }
    }

    /// Where a scalar that starts at `start` ends, by its style; or why that is not known.
    fn scalar_end(
        &self,
        start: usize,
        value: &str,
        style: TScalarStyle,
    ) -> Result<usize, &'static str> {
        let rest = &self.text[start..];
        match style {
            TScalarStyle::Plain => {
                if rest.starts_with(value) {
                    Ok(start + value.len())
                } else {
                    Err("a plain value over several lines cannot be edited in place")
                }
            }
            TScalarStyle::SingleQuoted => {
                let mut chars = rest.char_indices().skip(1).peekable();
                while let Some((index, c)) = chars.next() {
                    if c == '\'' {
                        if chars.peek().map(|(_, next)| *next) == Some('\'') {
                            chars.next();
                        } else {
                            return Ok(start + index + 1);
                        }
                    }
                }
                Err("an unterminated quoted value")
            }
            TScalarStyle::DoubleQuoted => {
                let mut chars = rest.char_indices().skip(1);
                while let Some((index, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => return Ok(start + index + 1),
                        _ => {}
                    }
                }
                Err("an unterminated quoted value")
            }
            _ => Err("a block scalar (`|` or `>`) cannot be edited in place"),
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let at = self.offset(mark);
        match event {
            Event::Scalar(value, style, ..) => {
                // An empty value (`key:` with nothing after it) is marked at the next token:
                // it is placed right after its key's colon instead.
                let empty_after_key = value.is_empty() && style == TScalarStyle::Plain;
                let at = match (empty_after_key, self.pending_key_end()) {
                    (true, Some(key_end)) => self.text[key_end..]
                        .find(':')
                        .map_or(at, |colon| key_end + colon + 1),
                    _ => at,
                };
                let (end, uneditable) = if empty_after_key {
                    (at, None)
                } else {
                    match self.scalar_end(at, &value, style) {
                        Ok(end) => (end, None),
                        Err(reason) => (at, Some(reason)),
                    }
                };
                self.attach(Node::Scalar {
                    value,
                    style,
                    start: at,
                    end,
                    uneditable,
                });
            }
            Event::Alias(_) => self.attach(Node::Alias { start: at }),
            Event::MappingStart(..) => {
                let flow = self.text[at..].starts_with('{');
                self.stack.push(Node::Mapping {
                    flow,
                    start: at,
                    end: at,
                    entries: Vec::new(),
                });
                self.keys.push(None);
            }
            Event::SequenceStart(..) => {
                let flow = self.text[at..].starts_with('[');
                self.stack.push(Node::Sequence {
                    flow,
                    start: at,
                    end: at,
                    items: Vec::new(),
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.keys.truncate(
                    self.keys.len()
                        - usize::from(matches!(self.stack.last(), Some(Node::Mapping { .. }))),
                );
                if let Some(mut node) = self.stack.pop() {
                    if let Node::Mapping { flow, end, .. } | Node::Sequence { flow, end, .. } =
                        &mut node
                    {
                        // A flow collection's end event sits on its closing bracket.
                        *end = if *flow { at + 1 } else { at };
                    }
                    self.attach(node);
                }
            }
            _ => {}
        }
    }
}

/// How a new scalar is written: a decimal number and `true`/`false` plain; text plain when
/// every YAML reader takes it back as the same text; double-quoted (JSON escapes) otherwise
/// (`on`, `null`, `True`, `1e3`, `0x10`, `.inf`, ...). A value that was quoted stays quoted the
/// same way.
fn format_value(value: &str, keep: Option<TScalarStyle>) -> String {
    match keep {
        Some(TScalarStyle::DoubleQuoted) => return quote(value),
        Some(TScalarStyle::SingleQuoted) if !value.contains('\n') => {
            return format!("'{}'", value.replace('\'', "''"))
        }
        _ => {}
    }
    // A decimal number stays a number.
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let unsigned = value.strip_prefix('-').unwrap_or(value);
    let decimal = digits(unsigned)
        || unsigned
            .split_once('.')
            .is_some_and(|(whole, fraction)| digits(whole) && digits(fraction));
    // So does a boolean (`unset` removes a value; there is no null to set).
    if decimal || value == "true" || value == "false" {
        return value.to_string();
    }
    // Text that some YAML reader takes for something else (null, a boolean, a special or
    // another base's number) is quoted, and so is anything outside a conservative alphabet.
    let lower = value.to_ascii_lowercase();
    let special = matches!(
        lower.as_str(),
        "null"
            | "~"
            | "true"
            | "false"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "y"
            | "n"
            | ".inf"
            | "+.inf"
            | "-.inf"
            | ".nan"
    ) || lower.parse::<f64>().is_ok()
        || lower.starts_with("0x")
        || lower.starts_with("0o")
        || lower.starts_with("0b");
    let plain_safe = !value.is_empty()
        && !special
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./@-:".contains(c))
        && !value.starts_with(['-', ':', '@', '.'])
        && !value.contains(": ")
        && !value.ends_with(':');
    if plain_safe {
        value.to_string()
    } else {
        quote(value)
    }
}

fn quote(value: &str) -> String {
    serde_json::to_string(value).expect("a string serialises")
}

fn format_key(key: &str) -> String {
    format_value(key, None)
}

impl<'a> Document<'a> {
    fn parse(text: &'a str) -> Result<Document<'a>, EditError> {
        let mut lines = vec![0];
        lines.extend(text.match_indices('\n').map(|(index, _)| index + 1));
        let mut builder = Builder {
            text,
            lines: lines.clone(),
            stack: Vec::new(),
            keys: Vec::new(),
            root: None,
            problem: None,
        };
        let mut parser = Parser::new_from_str(text);
        parser.load(&mut builder, false).map_err(|error| {
            refuse(
                format!("the inventory is not valid YAML: {error}"),
                Some("fix it first (`pgha inventory validate`)"),
            )
        })?;
        if let Some(problem) = builder.problem {
            return Err(problem);
        }
        match builder.root {
            Some(root @ Node::Mapping { .. }) => Ok(Document { text, lines, root }),
            _ => Err(refuse("the inventory is not a YAML mapping", None)),
        }
    }

    /// The line (0-based) that holds byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.lines.partition_point(|start| *start <= offset) - 1
    }

    fn line_text(&self, line: usize) -> &str {
        let start = self.lines[line];
        let end = self.lines.get(line + 1).copied().unwrap_or(self.text.len());
        self.text[start..end].trim_end_matches(['\n', '\r'])
    }

    fn indent_of(&self, line: usize) -> usize {
        let text = self.line_text(line);
        text.len() - text.trim_start_matches(' ').len()
    }

    /// Only whitespace before `offset` on its line.
    fn starts_its_line(&self, offset: usize) -> bool {
        let line = self.line_of(offset);
        self.text[self.lines[line]..offset].trim().is_empty()
    }

    /// The last line of a block entry that starts on `first` at indentation `indent` (a
    /// mapping key, or a sequence item's `-`): the last content line before the next content
    /// or comment line at `indent` or less. `dashes_belong`: lines starting with `-` at
    /// exactly `indent` still belong to it (a block sequence under a key, not indented).
    fn block_entry_end(&self, first: usize, indent: usize, dashes_belong: bool) -> usize {
        let mut last = first;
        for line in first + 1..self.lines.len() {
            let text = self.line_text(line);
            let trimmed = text.trim_start();
            if trimmed.is_empty() {
                continue;
            }
            let this_indent = self.indent_of(line);
            let continues = this_indent > indent
                || (dashes_belong && this_indent == indent && trimmed.starts_with('-'));
            if !continues {
                break;
            }
            if !trimmed.starts_with('#') {
                last = line;
            }
        }
        last
    }

    /// Remove whole lines `first..=last`.
    fn without_lines(&self, first: usize, last: usize) -> String {
        let start = self.lines[first];
        let end = self.lines.get(last + 1).copied().unwrap_or(self.text.len());
        format!("{}{}", &self.text[..start], &self.text[end..])
    }

    /// Insert `insertion` (whole lines, each ending in a newline) after line `line`.
    fn with_lines_after(&self, line: usize, insertion: &str) -> String {
        let at = self.lines.get(line + 1).copied().unwrap_or(self.text.len());
        let needs_newline = at == self.text.len() && !self.text.ends_with('\n');
        format!(
            "{}{}{}{}",
            &self.text[..at],
            if needs_newline { "\n" } else { "" },
            insertion,
            &self.text[at..]
        )
    }

    fn splice(&self, start: usize, end: usize, replacement: &str) -> String {
        format!("{}{replacement}{}", &self.text[..start], &self.text[end..])
    }

    /// Walk `keys` from the root; the deepest mapping reached and how many keys it consumed.
    fn walk<'n>(&'n self, keys: &[String]) -> Result<(&'n Node, usize), EditError> {
        let mut node = &self.root;
        for (depth, key) in keys.iter().enumerate() {
            match node {
                Node::Mapping { .. } => match node.get(key) {
                    Some((_, child)) => node = child,
                    None => return Ok((node, depth)),
                },
                Node::Alias { .. } => {
                    return Err(refuse(
                        format!("`{}` is an alias", keys[..depth].join(".")),
                        Some("edit the anchored value, or replace the alias by hand"),
                    ))
                }
                Node::Scalar { value, .. } if value.is_empty() => {
                    return Err(refuse(
                        format!("`{}` is empty", keys[..depth].join(".")),
                        Some("give it a first key by hand (or write `{}` after its colon) and edit again"),
                    ))
                }
                _ => {
                    return Err(refuse(
                        format!("`{}` is not a mapping", keys[..depth].join(".")),
                        None,
                    ))
                }
            }
        }
        Ok((node, keys.len()))
    }

    fn set(&self, keys: &[String], value: &str) -> Result<String, EditError> {
        let (node, found) = self.walk(keys)?;
        if found == keys.len() {
            return match node {
                Node::Scalar {
                    uneditable: Some(reason),
                    ..
                } => Err(refuse(
                    format!("`{}`: {reason}", keys.join(".")),
                    Some("edit that value by hand"),
                )),
                Node::Scalar {
                    value: old,
                    start,
                    end,
                    style,
                    ..
                } if old.is_empty() && *style == TScalarStyle::Plain && start == end => {
                    // `key:` with no value: the new one goes after the colon.
                    Ok(self.splice(*start, *end, &format!(" {}", format_value(value, None))))
                }
                Node::Scalar {
                    start, end, style, ..
                } => Ok(self.splice(*start, *end, &format_value(value, Some(*style)))),
                Node::Alias { start } => {
                    Ok(self.splice(*start, self.alias_end(*start), &format_value(value, None)))
                }
                _ => Err(refuse(
                    format!(
                        "`{}` holds a mapping or a list, not a value",
                        keys.join(".")
                    ),
                    Some("set one of its keys, or `unset` it first"),
                )),
            };
        }
        // Keys from `found` on are missing: add them under `node` (a mapping).
        self.insert(node, &keys[found..], value)
    }

    /// Add `keys` (nested, the last one holding `value`) to `mapping`.
    fn insert(&self, mapping: &Node, keys: &[String], value: &str) -> Result<String, EditError> {
        let Node::Mapping {
            flow,
            start,
            end,
            entries,
        } = mapping
        else {
            return Err(refuse(
                "cannot add a key to a value that is not a mapping",
                None,
            ));
        };
        let leaf = format_value(value, None);
        if *flow {
            // `{a: 1}` → `{a: 1, key: {inner: value}}`.
            let mut inline = leaf;
            for key in keys.iter().skip(1).rev() {
                inline = format!("{{{}: {inline}}}", format_key(key));
            }
            let entry = format!("{}: {inline}", format_key(&keys[0]));
            return Ok(match entries.last() {
                Some((_, last)) => {
                    let after = self.node_end(last)?;
                    self.splice(after, after, &format!(", {entry}"))
                }
                None => self.splice(end - 1, end - 1, &entry),
            });
        }
        // Block: a line at the indentation of the mapping's keys, after its last entry.
        let (indent, step, last_line) = match entries.last() {
            Some((last_key, last_value)) => {
                if !self.starts_its_line(last_key.start) {
                    return Err(refuse(
                        "the mapping to extend does not start its keys on their own lines",
                        Some("edit this part of the file by hand"),
                    ));
                }
                let indent = self.indent_of(self.line_of(last_key.start));
                let key_line = self.line_of(last_key.start);
                let dashes = matches!(last_value, Node::Sequence { flow: false, .. });
                let step = self.indent_step(entries).unwrap_or(2);
                (indent, step, self.block_entry_end(key_line, indent, dashes))
            }
            None => (
                self.indent_of(self.line_of(*start)),
                2,
                self.line_of(*start),
            ),
        };
        let mut lines = String::new();
        for (depth, key) in keys.iter().enumerate() {
            let pad = " ".repeat(indent + depth * step);
            if depth + 1 == keys.len() {
                lines.push_str(&format!("{pad}{}: {leaf}\n", format_key(key)));
            } else {
                lines.push_str(&format!("{pad}{}:\n", format_key(key)));
            }
        }
        Ok(self.with_lines_after(last_line, &lines))
    }

    /// The indentation step the file uses below one of these entries, if one is nested.
    fn indent_step(&self, entries: &[(Scalar, Node)]) -> Option<usize> {
        entries.iter().find_map(|(key, value)| match value {
            Node::Mapping {
                flow: false,
                entries: inner,
                ..
            } => inner.first().and_then(|(inner_key, _)| {
                self.indent_of(self.line_of(inner_key.start))
                    .checked_sub(self.indent_of(self.line_of(key.start)))
                    .filter(|step| *step > 0)
            }),
            _ => None,
        })
    }

    /// Just past the end of a node that is inside a flow collection.
    fn node_end(&self, node: &Node) -> Result<usize, EditError> {
        match node {
            Node::Scalar {
                uneditable: Some(reason),
                ..
            } => Err(refuse(*reason, Some("edit this part of the file by hand"))),
            Node::Scalar { end, .. } => Ok(*end),
            Node::Mapping {
                flow: true, end, ..
            }
            | Node::Sequence {
                flow: true, end, ..
            } => Ok(*end),
            Node::Alias { start } => Ok(self.alias_end(*start)),
            _ => Err(refuse(
                "a block collection inside a flow one cannot be edited",
                None,
            )),
        }
    }

    /// Just past an alias (`*name`) that starts at `start`.
    fn alias_end(&self, start: usize) -> usize {
        self.text[start..]
            .find(|c: char| c.is_whitespace() || ",}]".contains(c))
            .map_or(self.text.len(), |length| start + length)
    }

    fn unset(&self, keys: &[String]) -> Result<String, EditError> {
        let (parent, found) = self.walk(&keys[..keys.len() - 1])?;
        if found + 1 != keys.len() || parent.get(&keys[keys.len() - 1]).is_none() {
            return Err(refuse(
                format!("`{}` is not set", keys.join(".")),
                Some("`pgha inventory show -i INV` shows every value, defaults included"),
            ));
        }
        let Node::Mapping { flow, entries, .. } = parent else {
            unreachable!("walk stops on mappings")
        };
        let index = entries
            .iter()
            .position(|(key, _)| key.value == keys[keys.len() - 1])
            .expect("found above");
        let (key, value) = &entries[index];
        if *flow {
            let end = self.node_end(value)?;
            return Ok(
                self.remove_flow_span(key.start, end, index, entries.len(), |i| {
                    entries.get(i).map(|(key, _)| key.start)
                }),
            );
        }
        if !self.starts_its_line(key.start) {
            return Err(refuse(
                "the entry to remove does not start its own line",
                Some("edit this part of the file by hand"),
            ));
        }
        let line = self.line_of(key.start);
        let dashes = matches!(value, Node::Sequence { flow: false, .. });
        let last = self.block_entry_end(line, self.indent_of(line), dashes);
        Ok(self.without_lines(line, last))
    }

    /// Remove `start..end` (one item of a flow collection) with the separator that joins it
    /// to its neighbours: the following `, ` for all but the last item, else the preceding.
    fn remove_flow_span(
        &self,
        start: usize,
        end: usize,
        index: usize,
        count: usize,
        start_of: impl Fn(usize) -> Option<usize>,
    ) -> String {
        if index + 1 < count {
            let next = start_of(index + 1).unwrap_or(end);
            self.splice(start, next, "")
        } else if index > 0 {
            // From the end of the previous item's separator: `a, b` → `a`.
            let before = self.text[..start].trim_end();
            let comma = before.strip_suffix(',').map_or(before.len(), str::len);
            self.splice(comma, end, "")
        } else {
            self.splice(start, end, "")
        }
    }

    fn nodes(&self) -> Result<&Node, EditError> {
        match self.root.get("nodes") {
            Some((_, nodes @ Node::Sequence { .. })) => Ok(nodes),
            _ => Err(refuse(
                "the inventory has no `nodes` list",
                Some("add `nodes:` with at least one node"),
            )),
        }
    }

    fn node_name(item: &Node) -> Option<&str> {
        match item.get("name") {
            Some((_, Node::Scalar { value, .. })) => Some(value),
            _ => None,
        }
    }

    fn add_node(
        &self,
        name: &str,
        address: &str,
        roles: Option<&[String]>,
        tags: &[(String, String)],
    ) -> Result<String, EditError> {
        let Node::Sequence {
            flow, end, items, ..
        } = self.nodes()?
        else {
            unreachable!()
        };
        if items.iter().any(|item| Self::node_name(item) == Some(name)) {
            return Err(refuse(
                format!("a node called `{name}` is already listed"),
                Some("pick another name, or `remove-node` the old one first"),
            ));
        }
        let mut fields = vec![
            ("name".to_string(), format_value(name, None)),
            ("address".to_string(), format_value(address, None)),
        ];
        if let Some(roles) = roles {
            let list: Vec<String> = roles.iter().map(|role| format_value(role, None)).collect();
            fields.push(("roles".into(), format!("[{}]", list.join(", "))));
        }
        if !tags.is_empty() {
            let list: Vec<String> = tags
                .iter()
                .map(|(key, value)| format!("{}: {}", format_key(key), format_value(value, None)))
                .collect();
            fields.push(("tags".into(), format!("{{{}}}", list.join(", "))));
        }
        let inline = || {
            let body: Vec<String> = fields
                .iter()
                .map(|(key, value)| format!("{key}: {value}"))
                .collect();
            format!("{{{}}}", body.join(", "))
        };
        if *flow {
            return Ok(match items.last() {
                Some(last) => {
                    let after = self.node_end(last)?;
                    self.splice(after, after, &format!(", {}", inline()))
                }
                None => self.splice(end - 1, end - 1, &inline()),
            });
        }
        let Some(last) = items.last() else {
            return Err(refuse("the `nodes` list is empty", None));
        };
        // The dash of the last item: its indentation is the list's.
        let dash_line = self.line_of(last.start());
        let dash_indent = self.indent_of(dash_line);
        if !self.line_text(dash_line).trim_start().starts_with('-') {
            return Err(refuse(
                "the last node does not start its own line with `-`",
                Some("edit this part of the file by hand"),
            ));
        }
        let last_line = self.block_entry_end(dash_line, dash_indent, false);
        let pad = " ".repeat(dash_indent);
        let item = match last {
            Node::Mapping {
                flow: false,
                entries,
                ..
            } => {
                // Block items: `- name: x` then the other keys under `name`.
                let key_column = entries
                    .first()
                    .map(|(key, _)| key.start - self.lines[self.line_of(key.start)])
                    .unwrap_or(dash_indent + 2);
                let inner = " ".repeat(key_column);
                let mut text = String::new();
                for (index, (key, value)) in fields.iter().enumerate() {
                    if index == 0 {
                        let gap = " ".repeat(key_column.saturating_sub(dash_indent + 1).max(1));
                        text.push_str(&format!("{pad}-{gap}{key}: {value}\n"));
                    } else {
                        text.push_str(&format!("{inner}{key}: {value}\n"));
                    }
                }
                text
            }
            _ => format!("{pad}- {}\n", inline()),
        };
        Ok(self.with_lines_after(last_line, &item))
    }

    fn remove_node(&self, name: &str) -> Result<String, EditError> {
        let Node::Sequence { flow, items, .. } = self.nodes()? else {
            unreachable!()
        };
        let Some(index) = items
            .iter()
            .position(|item| Self::node_name(item) == Some(name))
        else {
            let names: Vec<&str> = items.iter().filter_map(Self::node_name).collect();
            return Err(refuse(
                format!("no node is called `{name}`"),
                Some(&format!("the nodes are: {}", names.join(", "))),
            ));
        };
        let item = &items[index];
        if *flow {
            let end = self.node_end(item)?;
            return Ok(
                self.remove_flow_span(item.start(), end, index, items.len(), |i| {
                    items.get(i).map(Node::start)
                }),
            );
        }
        let dash_line = self.line_of(item.start());
        let indent = self.indent_of(dash_line);
        let last = self.block_entry_end(dash_line, indent, false);
        Ok(self.without_lines(dash_line, last))
    }
}

#[cfg(test)]
mod tests;
