//! A FHIRPath evaluator for the subset that R4 search parameter expressions
//! use: member paths (with choice elements such as `value[x]`), `|` unions,
//! `is`/`as` (operators and functions), `ofType`, `where`, `exists`, `empty`,
//! `not`, `first`, `extension(url)`, `hasExtension(url)`, equality,
//! `and`/`or`, string, number and boolean literals, `%resource` and
//! `resolve() is Type`.
//!
//! Expressions are parsed once into an [`Expression`] and then evaluated
//! against `serde_json::Value` resources without copying them: results are
//! [`Item`]s that borrow from the resource.
//!
//! `resolve()` never fetches anything. It yields the type that the
//! reference names literally (`Reference.type`, the `Type/id` form, an
//! absolute URL ending in `Type/id`, or a contained resource), which is what
//! `where(resolve() is Patient)` needs. Any other use of a resolved item
//! yields nothing.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::Value;

/// The maximum nesting of parentheses, function arguments and operators that
/// the parser accepts.
const MAX_DEPTH: usize = 64;

/// Errors from parsing a FHIRPath expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FhirPathError {
    /// The expression has a character or token the subset does not know.
    #[error("unexpected {found} at offset {offset} in FHIRPath expression")]
    Unexpected {
        /// The unexpected token or character.
        found: String,
        /// The byte offset in the expression.
        offset: usize,
    },
    /// The expression ended early.
    #[error("FHIRPath expression ended unexpectedly")]
    UnexpectedEnd,
    /// A function outside the supported subset.
    #[error("unsupported FHIRPath function {0}()")]
    UnsupportedFunction(String),
    /// A function with the wrong number of arguments.
    #[error("FHIRPath function {name}() takes {expected} argument(s)")]
    Arity {
        /// The function name.
        name: String,
        /// The number of arguments expected.
        expected: usize,
    },
    /// A string literal without its closing quote.
    #[error("unterminated string literal in FHIRPath expression")]
    UnterminatedString,
    /// The expression nests deeper than the parser allows.
    #[error("FHIRPath expression nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// A parsed FHIRPath expression, ready to evaluate many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    root: Expr,
    text: String,
}

/// One element of an evaluation result.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// A value inside the resource.
    Node(Node<'a>),
    /// A string computed or written in the expression.
    String(String),
    /// A boolean computed or written in the expression.
    Boolean(bool),
    /// A number written in the expression.
    Number(f64),
    /// The target of `resolve()`, known only by its resource type.
    Resolved(String),
}

/// A value inside a resource, with its FHIR data type when it is known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node<'a> {
    /// The JSON value.
    pub value: &'a Value,
    /// The FHIR type name (`CodeableConcept`, `dateTime`, `Patient`…), taken
    /// from the choice element suffix, the resource type, the parent type, or
    /// inferred from the element name and shape. `None` when unknown.
    pub fhir_type: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// `$this`, or the input collection at the start of a path.
    This,
    /// `%resource` or `%rootResource`.
    Resource,
    /// A name at the start of a path: a type name or a member of the input.
    Identifier(String),
    /// `base.name`
    Member(Box<Expr>, String),
    /// `base.function(args)`, or `function(args)` on the input.
    Call(Box<Expr>, Function),
    /// `base[index]`
    Index(Box<Expr>, usize),
    Str(String),
    Bool(bool),
    Num(f64),
    Binary(Box<Expr>, BinaryOp, Box<Expr>),
    /// `x is Type`
    Is(Box<Expr>, String),
    /// `x as Type`
    As(Box<Expr>, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Function {
    Where(Box<Expr>),
    Exists(Option<Box<Expr>>),
    Empty,
    Not,
    First,
    Extension(String),
    HasExtension(String),
    OfType(String),
    As(String),
    Is(String),
    Resolve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinaryOp {
    Union,
    Equal,
    NotEqual,
    And,
    Or,
}

impl Expression {
    /// Parses an expression.
    ///
    /// # Errors
    ///
    /// Returns a [`FhirPathError`] when the text is not valid FHIRPath or uses
    /// a function outside the supported subset.
    pub fn parse(text: &str) -> Result<Self, FhirPathError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            depth: 0,
        };
        let root = parser.expression(0)?;
        if let Some(token) = parser.peek() {
            return Err(FhirPathError::Unexpected {
                found: token.kind.describe(),
                offset: token.offset,
            });
        }
        Ok(Self {
            root,
            text: text.to_owned(),
        })
    }

    /// Returns the expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates the expression with `resource` as both the input and
    /// `%resource`.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Item<'a>> {
        let root = resource_node(resource);
        self.evaluate_on(resource, root)
    }

    /// Evaluates the expression with `context` as the input (such as a
    /// composite parameter's component, relative to the base node) and
    /// `resource` as `%resource`.
    pub fn evaluate_on<'a>(&self, resource: &'a Value, context: Node<'a>) -> Vec<Item<'a>> {
        let env = Env { resource };
        env.eval(&self.root, &[Item::Node(context)], true)
    }
}

/// Returns the node for a resource, typed by its `resourceType`.
pub fn resource_node(resource: &Value) -> Node<'_> {
    let fhir_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(crate::search::static_resource_type);
    Node {
        value: resource,
        fhir_type,
    }
}

// ---------------------------------------------------------------------------
// Tokenizer

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Ident(String),
    Str(String),
    Num(f64),
    Env(String),
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Pipe,
    Equal,
    NotEqual,
}

impl TokenKind {
    fn describe(&self) -> String {
        match self {
            Self::Ident(name) => format!("'{name}'"),
            Self::Str(_) => "string literal".to_owned(),
            Self::Num(_) => "number".to_owned(),
            Self::Env(name) => format!("'%{name}'"),
            Self::Dot => "'.'".to_owned(),
            Self::Comma => "','".to_owned(),
            Self::LParen => "'('".to_owned(),
            Self::RParen => "')'".to_owned(),
            Self::LBracket => "'['".to_owned(),
            Self::RBracket => "']'".to_owned(),
            Self::Pipe => "'|'".to_owned(),
            Self::Equal => "'='".to_owned(),
            Self::NotEqual => "'!='".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    kind: TokenKind,
    offset: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, FhirPathError> {
    let mut tokens = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while let Some(&(offset, ch)) = chars.get(i) {
        let kind = match ch {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '.' => single(&mut i, TokenKind::Dot),
            ',' => single(&mut i, TokenKind::Comma),
            '(' => single(&mut i, TokenKind::LParen),
            ')' => single(&mut i, TokenKind::RParen),
            '[' => single(&mut i, TokenKind::LBracket),
            ']' => single(&mut i, TokenKind::RBracket),
            '|' => single(&mut i, TokenKind::Pipe),
            '=' => single(&mut i, TokenKind::Equal),
            '!' if matches!(chars.get(i + 1), Some((_, '='))) => {
                i += 2;
                TokenKind::NotEqual
            }
            '\'' => TokenKind::Str(string_literal(&chars, &mut i)?),
            '%' | '$' => {
                i += 1;
                let name = identifier(&chars, &mut i);
                if name.is_empty() {
                    return Err(FhirPathError::Unexpected {
                        found: format!("'{ch}'"),
                        offset,
                    });
                }
                if ch == '$' {
                    TokenKind::Ident(format!("${name}"))
                } else {
                    TokenKind::Env(name)
                }
            }
            '`' => {
                i += 1;
                let start = i;
                while matches!(chars.get(i), Some((_, c)) if *c != '`') {
                    i += 1;
                }
                let name: String = chars
                    .get(start..i)
                    .unwrap_or_default()
                    .iter()
                    .map(|(_, c)| c)
                    .collect();
                if chars.get(i).is_none() {
                    return Err(FhirPathError::UnexpectedEnd);
                }
                i += 1;
                TokenKind::Ident(name)
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while matches!(chars.get(i), Some((_, c)) if c.is_ascii_digit() || *c == '.') {
                    i += 1;
                }
                let literal: String = chars
                    .get(start..i)
                    .unwrap_or_default()
                    .iter()
                    .map(|(_, c)| c)
                    .collect();
                let number = literal
                    .parse::<f64>()
                    .map_err(|_| FhirPathError::Unexpected {
                        found: format!("number '{literal}'"),
                        offset,
                    })?;
                TokenKind::Num(number)
            }
            c if c.is_alphabetic() || c == '_' => TokenKind::Ident(identifier(&chars, &mut i)),
            other => {
                return Err(FhirPathError::Unexpected {
                    found: format!("'{other}'"),
                    offset,
                });
            }
        };
        tokens.push(Token { kind, offset });
    }
    Ok(tokens)
}

fn single(i: &mut usize, kind: TokenKind) -> TokenKind {
    *i += 1;
    kind
}

fn identifier(chars: &[(usize, char)], i: &mut usize) -> String {
    let mut name = String::new();
    while let Some(&(_, c)) = chars.get(*i) {
        if c.is_alphanumeric() || c == '_' {
            name.push(c);
            *i += 1;
        } else {
            break;
        }
    }
    name
}

fn string_literal(chars: &[(usize, char)], i: &mut usize) -> Result<String, FhirPathError> {
    *i += 1;
    let mut out = String::new();
    loop {
        let Some(&(_, c)) = chars.get(*i) else {
            return Err(FhirPathError::UnterminatedString);
        };
        *i += 1;
        match c {
            '\'' => return Ok(out),
            '\\' => {
                let Some(&(_, escaped)) = chars.get(*i) else {
                    return Err(FhirPathError::UnterminatedString);
                };
                *i += 1;
                out.push(match escaped {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
            }
            other => out.push(other),
        }
    }
}

// ---------------------------------------------------------------------------
// Parser

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

/// Binding power of infix operators, from FHIRPath's precedence table:
/// `is`/`as` bind tighter than `|`, which binds tighter than `=`/`!=`,
/// then `and`, then `or`.
fn infix_power(token: &TokenKind) -> Option<u8> {
    match token {
        TokenKind::Ident(name) if name == "is" || name == "as" => Some(50),
        TokenKind::Pipe => Some(40),
        TokenKind::Equal | TokenKind::NotEqual => Some(30),
        TokenKind::Ident(name) if name == "and" => Some(20),
        TokenKind::Ident(name) if name == "or" || name == "xor" => Some(10),
        _ => None,
    }
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Result<Token, FhirPathError> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or(FhirPathError::UnexpectedEnd)?;
        self.pos += 1;
        Ok(token)
    }

    fn expect(&mut self, kind: &TokenKind) -> Result<(), FhirPathError> {
        let token = self.next()?;
        if &token.kind == kind {
            Ok(())
        } else {
            Err(FhirPathError::Unexpected {
                found: token.kind.describe(),
                offset: token.offset,
            })
        }
    }

    fn expression(&mut self, min_power: u8) -> Result<Expr, FhirPathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FhirPathError::TooDeep);
        }
        let mut left = self.postfix()?;
        while let Some(power) = self.peek().and_then(|t| infix_power(&t.kind)) {
            if power <= min_power {
                break;
            }
            let operator = self.next()?;
            left = match operator.kind {
                TokenKind::Ident(ref name) if name == "is" || name == "as" => {
                    let type_name = self.type_specifier()?;
                    if name == "is" {
                        Expr::Is(Box::new(left), type_name)
                    } else {
                        Expr::As(Box::new(left), type_name)
                    }
                }
                kind => {
                    let op = match kind {
                        TokenKind::Pipe => BinaryOp::Union,
                        TokenKind::Equal => BinaryOp::Equal,
                        TokenKind::NotEqual => BinaryOp::NotEqual,
                        TokenKind::Ident(name) if name == "and" => BinaryOp::And,
                        TokenKind::Ident(name) if name == "or" => BinaryOp::Or,
                        other => {
                            return Err(FhirPathError::Unexpected {
                                found: other.describe(),
                                offset: operator.offset,
                            });
                        }
                    };
                    let right = self.expression(power)?;
                    Expr::Binary(Box::new(left), op, Box::new(right))
                }
            };
        }
        self.depth -= 1;
        Ok(left)
    }

    /// Parses a type name, optionally qualified (`FHIR.Patient`, `System.String`).
    fn type_specifier(&mut self) -> Result<String, FhirPathError> {
        let token = self.next()?;
        let TokenKind::Ident(mut name) = token.kind else {
            return Err(FhirPathError::Unexpected {
                found: token.kind.describe(),
                offset: token.offset,
            });
        };
        if matches!(self.peek(), Some(t) if t.kind == TokenKind::Dot) {
            self.pos += 1;
            let qualified = self.next()?;
            let TokenKind::Ident(rest) = qualified.kind else {
                return Err(FhirPathError::Unexpected {
                    found: qualified.kind.describe(),
                    offset: qualified.offset,
                });
            };
            name = rest;
        }
        Ok(name)
    }

    fn postfix(&mut self) -> Result<Expr, FhirPathError> {
        let mut expr = self.term()?;
        loop {
            match self.peek().map(|t| &t.kind) {
                Some(TokenKind::Dot) => self.pos += 1,
                Some(TokenKind::LBracket) => {
                    self.pos += 1;
                    let token = self.next()?;
                    let index = match token.kind {
                        TokenKind::Num(n) if n >= 0.0 && n.fract() == 0.0 && n < 1e9 => n as usize,
                        other => {
                            return Err(FhirPathError::Unexpected {
                                found: other.describe(),
                                offset: token.offset,
                            });
                        }
                    };
                    self.expect(&TokenKind::RBracket)?;
                    expr = Expr::Index(Box::new(expr), index);
                    continue;
                }
                _ => break,
            }
            let token = self.next()?;
            let TokenKind::Ident(name) = token.kind else {
                return Err(FhirPathError::Unexpected {
                    found: token.kind.describe(),
                    offset: token.offset,
                });
            };
            expr = if matches!(self.peek(), Some(t) if t.kind == TokenKind::LParen) {
                let function = self.function(&name)?;
                Expr::Call(Box::new(expr), function)
            } else {
                Expr::Member(Box::new(expr), name)
            };
        }
        Ok(expr)
    }

    fn term(&mut self) -> Result<Expr, FhirPathError> {
        let token = self.next()?;
        match token.kind {
            TokenKind::LParen => {
                let inner = self.expression(0)?;
                self.expect(&TokenKind::RParen)?;
                Ok(inner)
            }
            TokenKind::Str(text) => Ok(Expr::Str(text)),
            TokenKind::Num(number) => Ok(Expr::Num(number)),
            TokenKind::Env(name) if name == "resource" || name == "rootResource" => {
                Ok(Expr::Resource)
            }
            TokenKind::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "$this" => Ok(Expr::This),
                _ if matches!(self.peek(), Some(t) if t.kind == TokenKind::LParen) => {
                    let function = self.function(&name)?;
                    Ok(Expr::Call(Box::new(Expr::This), function))
                }
                _ => Ok(Expr::Identifier(name)),
            },
            other => Err(FhirPathError::Unexpected {
                found: other.describe(),
                offset: token.offset,
            }),
        }
    }

    fn function(&mut self, name: &str) -> Result<Function, FhirPathError> {
        self.expect(&TokenKind::LParen)?;
        let mut args = Vec::new();
        if matches!(self.peek(), Some(t) if t.kind == TokenKind::RParen) {
            self.pos += 1;
        } else {
            loop {
                args.push(self.expression(0)?);
                let token = self.next()?;
                match token.kind {
                    TokenKind::Comma => continue,
                    TokenKind::RParen => break,
                    other => {
                        return Err(FhirPathError::Unexpected {
                            found: other.describe(),
                            offset: token.offset,
                        });
                    }
                }
            }
        }
        build_function(name, args)
    }
}

fn build_function(name: &str, mut args: Vec<Expr>) -> Result<Function, FhirPathError> {
    let arity = |expected: usize| FhirPathError::Arity {
        name: name.to_owned(),
        expected,
    };
    let count = args.len();
    let single = args.pop();
    let function = match (name, count, single) {
        ("where", 1, Some(criteria)) => Function::Where(Box::new(criteria)),
        ("exists", 0, None) => Function::Exists(None),
        ("exists", 1, Some(criteria)) => Function::Exists(Some(Box::new(criteria))),
        ("empty", 0, None) => Function::Empty,
        ("not", 0, None) => Function::Not,
        ("first", 0, None) => Function::First,
        ("resolve", 0, None) => Function::Resolve,
        ("extension", 1, Some(Expr::Str(url))) => Function::Extension(url),
        ("hasExtension", 1, Some(Expr::Str(url))) => Function::HasExtension(url),
        ("ofType" | "as" | "is", 1, Some(arg)) => {
            let type_name = match arg {
                Expr::Identifier(type_name) => type_name,
                Expr::Member(_, type_name) => type_name,
                _ => return Err(arity(1)),
            };
            match name {
                "ofType" => Function::OfType(type_name),
                "as" => Function::As(type_name),
                _ => Function::Is(type_name),
            }
        }
        ("where" | "extension" | "hasExtension" | "ofType" | "as" | "is", _, _) => {
            return Err(arity(1));
        }
        ("exists", _, _) => return Err(arity(1)),
        ("empty" | "not" | "first" | "resolve", _, _) => return Err(arity(0)),
        (other, _, _) => return Err(FhirPathError::UnsupportedFunction(other.to_owned())),
    };
    Ok(function)
}

// ---------------------------------------------------------------------------
// Evaluation

struct Env<'a> {
    resource: &'a Value,
}

impl<'a> Env<'a> {
    /// Evaluates `expr` on `input`. `at_root` is true while `expr` starts a
    /// path on the evaluation context, where a type name such as `Patient`
    /// selects the context instead of a member.
    fn eval(&self, expr: &Expr, input: &[Item<'a>], at_root: bool) -> Vec<Item<'a>> {
        match expr {
            Expr::This => input.to_vec(),
            Expr::Resource => vec![Item::Node(resource_node(self.resource))],
            Expr::Identifier(name) => {
                if at_root && starts_uppercase(name) {
                    let selected = filter_type(input, name);
                    if !selected.is_empty() {
                        return selected;
                    }
                }
                children(input, name)
            }
            Expr::Member(base, name) => children(&self.eval(base, input, at_root), name),
            Expr::Call(base, function) => {
                let base = self.eval(base, input, at_root);
                self.call(function, base)
            }
            Expr::Index(base, index) => self
                .eval(base, input, at_root)
                .into_iter()
                .nth(*index)
                .into_iter()
                .collect(),
            Expr::Str(text) => vec![Item::String(text.clone())],
            Expr::Bool(value) => vec![Item::Boolean(*value)],
            Expr::Num(value) => vec![Item::Number(*value)],
            Expr::Is(base, type_name) => {
                let base = self.eval(base, input, at_root);
                match base.as_slice() {
                    [item] => vec![Item::Boolean(item_is(item, type_name))],
                    _ => Vec::new(),
                }
            }
            Expr::As(base, type_name) => filter_type(&self.eval(base, input, at_root), type_name),
            Expr::Binary(left, op, right) => {
                let left = self.eval(left, input, at_root);
                let right = self.eval(right, input, at_root);
                binary(*op, left, right)
            }
        }
    }

    fn call(&self, function: &Function, base: Vec<Item<'a>>) -> Vec<Item<'a>> {
        match function {
            Function::Where(criteria) => base
                .into_iter()
                .filter(|item| {
                    let result = self.eval(criteria, std::slice::from_ref(item), false);
                    truth(&result) == Some(true)
                })
                .collect(),
            Function::Exists(None) => vec![Item::Boolean(!base.is_empty())],
            Function::Exists(Some(criteria)) => {
                let any = base.iter().any(|item| {
                    let result = self.eval(criteria, std::slice::from_ref(item), false);
                    truth(&result) == Some(true)
                });
                vec![Item::Boolean(any)]
            }
            Function::Empty => vec![Item::Boolean(base.is_empty())],
            Function::Not => match truth(&base) {
                Some(value) => vec![Item::Boolean(!value)],
                None => Vec::new(),
            },
            Function::First => base.into_iter().take(1).collect(),
            Function::Extension(url) => extensions(&base, url),
            Function::HasExtension(url) => vec![Item::Boolean(!extensions(&base, url).is_empty())],
            Function::OfType(type_name) | Function::As(type_name) => filter_type(&base, type_name),
            Function::Is(type_name) => match base.as_slice() {
                [item] => vec![Item::Boolean(item_is(item, type_name))],
                _ => Vec::new(),
            },
            Function::Resolve => base
                .iter()
                .filter_map(|item| self.resolve(item))
                .map(Item::Resolved)
                .collect(),
        }
    }

    /// Returns the resource type a reference names, without fetching it.
    fn resolve(&self, item: &Item<'a>) -> Option<String> {
        let value = match item {
            Item::Node(node) => node.value,
            _ => return None,
        };
        let literal = match value {
            Value::String(text) => Some(text.as_str()),
            Value::Object(map) => {
                if let Some(type_name) = map.get("type").and_then(Value::as_str) {
                    return Some(type_name.to_owned());
                }
                map.get("reference").and_then(Value::as_str)
            }
            _ => None,
        }?;
        if let Some(id) = literal.strip_prefix('#') {
            return contained_type(self.resource, id);
        }
        reference_type(literal).map(str::to_owned)
    }
}

fn starts_uppercase(name: &str) -> bool {
    name.chars().next().is_some_and(char::is_uppercase)
}

fn contained_type(resource: &Value, id: &str) -> Option<String> {
    resource
        .get("contained")?
        .as_array()?
        .iter()
        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?
        .get("resourceType")?
        .as_str()
        .map(str::to_owned)
}

/// Returns the resource type named by a literal reference: `Type/id`,
/// `Type/id/_history/v`, or an absolute URL ending in one of those.
pub fn reference_type(reference: &str) -> Option<&'static str> {
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let segments: Vec<&str> = path.split('/').collect();
    let n = segments.len();
    let candidates = [n.checked_sub(2), n.checked_sub(4)];
    for index in candidates.into_iter().flatten() {
        let Some(segment) = segments.get(index) else {
            continue;
        };
        if index + 4 == n && segments.get(index + 2) != Some(&"_history") {
            continue;
        }
        if let Some(type_name) = crate::search::static_resource_type(segment) {
            return Some(type_name);
        }
    }
    None
}

fn truth(items: &[Item<'_>]) -> Option<bool> {
    match items {
        [] => None,
        [Item::Boolean(value)] => Some(*value),
        [Item::Node(node)] => Some(node.value.as_bool().unwrap_or(true)),
        _ => Some(true),
    }
}

fn binary<'a>(op: BinaryOp, left: Vec<Item<'a>>, right: Vec<Item<'a>>) -> Vec<Item<'a>> {
    match op {
        BinaryOp::Union => union(left, right),
        BinaryOp::Equal | BinaryOp::NotEqual => {
            if left.is_empty() || right.is_empty() {
                return Vec::new();
            }
            let equal = left.len() == right.len()
                && left
                    .iter()
                    .zip(right.iter())
                    .all(|(a, b)| items_equal(a, b));
            vec![Item::Boolean(equal == (op == BinaryOp::Equal))]
        }
        BinaryOp::And => match (truth(&left), truth(&right)) {
            (Some(false), _) | (_, Some(false)) => vec![Item::Boolean(false)],
            (Some(true), Some(true)) => vec![Item::Boolean(true)],
            _ => Vec::new(),
        },
        BinaryOp::Or => match (truth(&left), truth(&right)) {
            (Some(true), _) | (_, Some(true)) => vec![Item::Boolean(true)],
            (Some(false), Some(false)) => vec![Item::Boolean(false)],
            _ => Vec::new(),
        },
    }
}

/// Appends the items of `right` that are not already in the result to
/// `left`. Items are grouped by a hash that agrees with `PartialEq`, so the
/// cost stays linear in the number of items.
fn union<'a>(left: Vec<Item<'a>>, right: Vec<Item<'a>>) -> Vec<Item<'a>> {
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for (position, item) in left.iter().enumerate() {
        by_hash.entry(item_hash(item)).or_default().push(position);
    }
    let mut out = left;
    for item in right {
        let positions = by_hash.entry(item_hash(&item)).or_default();
        if positions
            .iter()
            .any(|&position| out.get(position) == Some(&item))
        {
            continue;
        }
        positions.push(out.len());
        out.push(item);
    }
    out
}

/// Hashes an item consistently with its `PartialEq`. Numbers hash only
/// their kind, because `0.0` and `-0.0` are equal but differ in their bits.
fn item_hash(item: &Item<'_>) -> u64 {
    let mut hasher = DefaultHasher::new();
    std::mem::discriminant(item).hash(&mut hasher);
    match item {
        Item::Node(node) => (node.value, node.fhir_type).hash(&mut hasher),
        Item::String(text) | Item::Resolved(text) => text.hash(&mut hasher),
        Item::Boolean(value) => value.hash(&mut hasher),
        Item::Number(_) => {}
    }
    hasher.finish()
}

/// A primitive view of an item, for equality.
enum Primitive<'v> {
    Str(&'v str),
    Bool(bool),
    Num(f64),
    Other(&'v Value),
    Resolved(&'v str),
}

fn primitive<'v>(item: &'v Item<'_>) -> Primitive<'v> {
    match item {
        Item::String(text) => Primitive::Str(text),
        Item::Boolean(value) => Primitive::Bool(*value),
        Item::Number(value) => Primitive::Num(*value),
        Item::Resolved(type_name) => Primitive::Resolved(type_name),
        Item::Node(node) => match node.value {
            Value::String(text) => Primitive::Str(text),
            Value::Bool(value) => Primitive::Bool(*value),
            Value::Number(number) => match number.to_string().parse::<f64>() {
                Ok(value) => Primitive::Num(value),
                Err(_) => Primitive::Other(node.value),
            },
            other => Primitive::Other(other),
        },
    }
}

fn items_equal(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (primitive(a), primitive(b)) {
        (Primitive::Str(x), Primitive::Str(y)) => x == y,
        (Primitive::Bool(x), Primitive::Bool(y)) => x == y,
        (Primitive::Num(x), Primitive::Num(y)) => x == y,
        (Primitive::Other(x), Primitive::Other(y)) => x == y,
        (Primitive::Resolved(x), Primitive::Resolved(y)) => x == y,
        _ => false,
    }
}

fn extensions<'a>(base: &[Item<'a>], url: &str) -> Vec<Item<'a>> {
    let mut out = Vec::new();
    for node in nodes(base) {
        let Some(list) = node.value.get("extension").and_then(Value::as_array) else {
            continue;
        };
        for extension in list {
            if extension.get("url").and_then(Value::as_str) == Some(url) {
                out.push(Item::Node(Node {
                    value: extension,
                    fhir_type: Some("Extension"),
                }));
            }
        }
    }
    out
}

fn nodes<'i, 'a>(items: &'i [Item<'a>]) -> impl Iterator<Item = Node<'a>> + 'i {
    items.iter().filter_map(|item| match item {
        Item::Node(node) => Some(*node),
        _ => None,
    })
}

fn filter_type<'a>(items: &[Item<'a>], type_name: &str) -> Vec<Item<'a>> {
    items
        .iter()
        .filter(|item| item_is(item, type_name))
        .cloned()
        .collect()
}

/// True when `item` is of FHIR type `type_name` or a type derived from it.
/// Type names compare case-insensitively, so `DateTime` and `dateTime` are
/// the same type, as the R4 expressions use both spellings.
fn item_is(item: &Item<'_>, type_name: &str) -> bool {
    let actual = match item {
        Item::Node(node) => node.fhir_type,
        Item::String(_) => Some("string"),
        Item::Boolean(_) => Some("boolean"),
        Item::Number(_) => Some("decimal"),
        Item::Resolved(resource_type) => {
            return resource_type.eq_ignore_ascii_case(type_name)
                || ["Resource", "DomainResource"]
                    .iter()
                    .any(|base| base.eq_ignore_ascii_case(type_name));
        }
    };
    let Some(mut current) = actual else {
        return false;
    };
    loop {
        if current.eq_ignore_ascii_case(type_name) {
            return true;
        }
        match parent_type(current) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
}

/// The base type of a FHIR type, for `is`/`as` on derived types.
fn parent_type(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity" => {
            "Quantity"
        }
        "code" | "id" | "markdown" => "string",
        "url" | "canonical" | "oid" | "uuid" => "uri",
        "unsignedInt" | "positiveInt" => "integer",
        "Resource" => return None,
        "DomainResource" => "Resource",
        "Bundle" | "Binary" | "Parameters" => "Resource",
        other if crate::search::static_resource_type(other).is_some() => "DomainResource",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Member access and type inference

fn children<'a>(input: &[Item<'a>], name: &str) -> Vec<Item<'a>> {
    let mut out = Vec::new();
    for node in nodes(input) {
        let Value::Object(map) = node.value else {
            continue;
        };
        if let Some(value) = map.get(name) {
            let known = child_type(node.fhir_type, name);
            push_values(&mut out, value, |item| {
                known.or_else(|| infer_type(name, item))
            });
            continue;
        }
        // A choice element: `value` matches `valueQuantity`, `valueString`…
        for (key, value) in map {
            let Some(suffix) = key.strip_prefix(name) else {
                continue;
            };
            if !starts_uppercase(suffix) {
                continue;
            }
            if let Some(type_name) = choice_type(suffix) {
                push_values(&mut out, value, |_| Some(type_name));
            }
        }
    }
    out
}

fn push_values<'a>(
    out: &mut Vec<Item<'a>>,
    value: &'a Value,
    type_of: impl Fn(&'a Value) -> Option<&'static str>,
) {
    match value {
        Value::Array(items) => {
            for item in items {
                if !item.is_null() {
                    out.push(Item::Node(Node {
                        value: item,
                        fhir_type: type_of(item),
                    }));
                }
            }
        }
        Value::Null => {}
        other => out.push(Item::Node(Node {
            value: other,
            fhir_type: type_of(other),
        })),
    }
}

/// The FHIR data types that can follow a choice element's name, in their
/// canonical spelling.
const DATA_TYPES: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Identifier",
    "Meta",
    "Money",
    "ParameterDefinition",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "Timing",
    "TriggerDefinition",
    "UsageContext",
];

/// Maps a choice element suffix (`Quantity`, `DateTime`, `String`) to its
/// FHIR type name.
fn choice_type(suffix: &str) -> Option<&'static str> {
    DATA_TYPES
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(suffix))
}

/// The type of a member of a known complex type, where it is fixed.
fn child_type(parent: Option<&str>, name: &str) -> Option<&'static str> {
    Some(match (parent?, name) {
        ("CodeableConcept", "coding") => "Coding",
        ("CodeableConcept" | "Coding", "text" | "display") => "string",
        ("Coding", "system") => "uri",
        ("Coding", "code") => "code",
        ("Identifier", "type") => "CodeableConcept",
        ("Identifier", "period") | ("ContactPoint", "period") => "Period",
        ("Identifier", "value") => "string",
        ("Reference", "identifier") => "Identifier",
        ("Reference", "reference") => "string",
        ("Period", "start" | "end") => "dateTime",
        ("Timing", "event") => "dateTime",
        ("Timing", "code") => "CodeableConcept",
        ("Range", "low" | "high") => "SimpleQuantity",
        ("Meta", "lastUpdated") => "instant",
        ("Meta", "tag" | "security") => "Coding",
        ("Meta", "profile") => "canonical",
        ("Meta", "source") => "uri",
        ("UsageContext", "code") => "Coding",
        (_, "meta") => "Meta",
        (_, "extension" | "modifierExtension") => "Extension",
        _ => return None,
    })
}

/// Infers the FHIR type of an element from its name and JSON shape, for
/// elements whose type the path does not fix.
pub fn infer_type(key: &str, value: &Value) -> Option<&'static str> {
    let map = match value {
        Value::Object(map) => map,
        Value::Bool(_) => return Some("boolean"),
        Value::Number(_) => return Some("decimal"),
        _ => return None,
    };
    if let Some(resource_type) = map.get("resourceType").and_then(Value::as_str) {
        return crate::search::static_resource_type(resource_type);
    }
    let has = |field: &str| map.contains_key(field);
    match key {
        "telecom" => return Some("ContactPoint"),
        "identifier" if has("value") || has("system") => return Some("Identifier"),
        "address" => return Some("Address"),
        "name" if has("family") || has("given") || has("text") || has("prefix") => {
            return Some("HumanName");
        }
        _ => {}
    }
    let shape = if has("coding") {
        "CodeableConcept"
    } else if has("reference") || (has("identifier") && has("type") && !has("value")) {
        "Reference"
    } else if has("family") || has("given") {
        "HumanName"
    } else if has("line") || has("city") || has("postalCode") || has("country") {
        "Address"
    } else if has("currency") {
        "Money"
    } else if map.get("value").is_some_and(Value::is_number)
        && (has("unit") || has("code") || has("comparator"))
    {
        "Quantity"
    } else if has("system") && has("value") {
        contact_or_identifier(map)
    } else if has("system") && has("code") {
        "Coding"
    } else if has("low") || has("high") {
        "Range"
    } else if has("numerator") || has("denominator") {
        "Ratio"
    } else if has("start") || has("end") {
        "Period"
    } else if has("event") || has("repeat") {
        "Timing"
    } else if has("origin") && has("dimensions") {
        "SampledData"
    } else if has("code") && (has("display") || has("version")) {
        "Coding"
    } else if map.get("value").is_some_and(Value::is_number) && !has("url") {
        "Quantity"
    } else if has("text") && map.len() == 1 {
        "CodeableConcept"
    } else {
        return None;
    };
    Some(shape)
}

/// ContactPoint.system is one of a small set of codes, while
/// Identifier.system is a URI.
fn contact_or_identifier(map: &serde_json::Map<String, Value>) -> &'static str {
    const CONTACT_SYSTEMS: &[&str] = &["phone", "fax", "email", "pager", "url", "sms", "other"];
    match map.get("system").and_then(Value::as_str) {
        Some(system) if CONTACT_SYSTEMS.contains(&system) => "ContactPoint",
        _ => "Identifier",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn union_drops_repeats_from_right() {
        let resource = json!({
            "resourceType": "Patient",
            "name": [{"family": "A"}, {"family": "B"}],
            "contact": [{"name": {"family": "B"}}, {"name": {"family": "C"}}]
        });
        let Ok(expression) = Expression::parse("Patient.name.family | Patient.contact.name.family")
        else {
            panic!("the expression did not parse");
        };
        let families: Vec<_> = expression
            .evaluate(&resource)
            .iter()
            .filter_map(|item| match item {
                Item::Node(node) => node.value.as_str().map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(families, ["A", "B", "C"]);
    }

    #[test]
    fn union_of_large_collections_keeps_distinct() {
        // Both sides hold 20,000 distinct names. Comparing each right item
        // with every left one would take 200 million deep comparisons.
        let names: Vec<Value> = (0..20_000)
            .map(|i| json!({"family": format!("F{i}")}))
            .collect();
        let resource = json!({"resourceType": "Patient", "name": names});
        let Ok(expression) = Expression::parse("Patient.name | Patient.name.where(true)") else {
            panic!("the expression did not parse");
        };
        let count = expression.evaluate(&resource).len();
        assert_eq!(count, 20_000);
    }
}
