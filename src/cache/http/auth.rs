//! Registry authorization, sans-IO: parsing `WWW-Authenticate` challenges, building the token
//! request URL and reading the token service's answer. The client in `client.rs` does the I/O.

use std::time::Duration;

use base64::Engine;

/// A challenge from a `WWW-Authenticate` header of a 401/403 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`: send the credentials themselves.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`: fetch a token from `realm` first.
    Bearer(BearerChallenge),
}

/// The parameters of a Bearer challenge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BearerChallenge {
    /// Token service URL.
    pub realm: String,
    /// `service` parameter, passed through to the token service.
    pub service: String,
    /// `scope` parameter (e.g. `repository:team/app:pull`), passed through.
    pub scope: String,
}

/// Why a challenge or token answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The `WWW-Authenticate` header names neither Basic nor Bearer.
    #[error("unsupported WWW-Authenticate scheme: {0:?}")]
    UnsupportedScheme(String),
    /// A Bearer challenge lacks a required parameter.
    #[error("Bearer challenge without `{0}`")]
    MissingParameter(&'static str),
    /// The challenge's parameter list is malformed.
    #[error("malformed WWW-Authenticate parameters: {0:?}")]
    Malformed(String),
    /// The token service's answer is not usable.
    #[error("bad token response: {0}")]
    BadToken(String),
}

/// Parses a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Result<Challenge, AuthError> {
    let header = header.trim();
    let (scheme, rest) = match header.find(char::is_whitespace) {
        Some(i) => (&header[..i], header[i..].trim_start()),
        None => (header, ""),
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Ok(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::UnsupportedScheme(scheme.to_string()));
    }
    let params = parse_params(rest)?;
    let get = |name: &'static str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .ok_or(AuthError::MissingParameter(name))
    };
    // The reference requires all three; a registry that omits `scope` (no repository) gets an
    // empty scope rather than a refusal, since the token service decides what that means.
    // An empty realm names no token service: refused here rather than failing later as a URL.
    let realm = get("realm")?;
    if realm.trim().is_empty() {
        return Err(AuthError::MissingParameter("realm"));
    }
    Ok(Challenge::Bearer(BearerChallenge {
        realm,
        service: get("service")?,
        scope: get("scope").unwrap_or_default(),
    }))
}

/// Splits `k1="v1", k2=v2` into pairs; commas inside quoted values are kept, `\"` unescaped.
fn parse_params(text: &str) -> Result<Vec<(String, String)>, AuthError> {
    let malformed = || AuthError::Malformed(text.to_string());
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || key.trim().is_empty() {
            return Err(malformed());
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(malformed)?),
                    Some(c) => value.push(c),
                    None => return Err(malformed()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.push((key.trim().to_string(), value));
    }
}

impl BearerChallenge {
    /// The token request URL: `<realm>?service=<service>&scope=<scope>`, values percent-encoded
    /// (a scope holds `:` and `/`, which are fine, but a space-separated multi-scope is not).
    pub fn token_url(&self) -> Result<reqwest::Url, AuthError> {
        let mut url = reqwest::Url::parse(&self.realm)
            .map_err(|e| AuthError::BadToken(format!("realm {:?}: {e}", self.realm)))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("service", &self.service);
            if !self.scope.is_empty() {
                q.append_pair("scope", &self.scope);
            }
        }
        Ok(url)
    }
}

/// The `client_id` this client names itself with in the OAuth2 refresh-token flow.
const OAUTH_CLIENT_ID: &str = "overlaybd-target";

/// The characters `application/x-www-form-urlencoded` leaves as they are; all others are
/// percent-encoded (a space as `%20`, which form decoders read as a space too).
const FORM_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'*');

impl BearerChallenge {
    /// The form body of the OAuth2 refresh-token request, POSTed to `realm` in exchange for a
    /// Bearer token when the credentials are an identity token:
    /// `grant_type=refresh_token&refresh_token=…&service=…&scope=…&client_id=…`, values
    /// form-encoded (`scope` left out when the challenge has none).
    pub fn refresh_token_form(&self, refresh_token: &str) -> String {
        let enc = |v: &str| percent_encoding::utf8_percent_encode(v, FORM_VALUE).to_string();
        let mut body = format!(
            "grant_type=refresh_token&refresh_token={}&service={}",
            enc(refresh_token),
            enc(&self.service)
        );
        if !self.scope.is_empty() {
            body.push_str("&scope=");
            body.push_str(&enc(&self.scope));
        }
        body.push_str("&client_id=");
        body.push_str(&enc(OAUTH_CLIENT_ID));
        body
    }
}

/// A bearer token and how long it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token itself.
    pub token: String,
    /// Lifetime from the moment it was received.
    pub lifetime: Duration,
}

/// Tokens whose answer gives no `expires_in` live this long (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Reads a token service's JSON answer: `token`, else `access_token`; `expires_in` seconds.
/// The usable lifetime is shortened by a tenth, so a token is renewed before it lapses.
pub fn parse_token_response(body: &[u8]) -> Result<Token, AuthError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| AuthError::BadToken(e.to_string()))?;
    let token = a
        .token
        .filter(|t| !t.is_empty())
        .or(a.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| AuthError::BadToken("no `token` or `access_token`".into()))?;
    let lifetime = a
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok(Token {
        token,
        lifetime: lifetime - lifetime / 10,
    })
}

/// The `Authorization` value for HTTP Basic.
pub fn basic_header(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_bearer_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:overlaybd/redis:pull""#;
        let Challenge::Bearer(b) = parse_challenge(h).unwrap() else {
            panic!("not bearer")
        };
        assert_eq!(b.realm, "https://auth.docker.io/token");
        assert_eq!(b.service, "registry.docker.io");
        assert_eq!(b.scope, "repository:overlaybd/redis:pull");
        assert_eq!(
            b.token_url().unwrap().as_str(),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Aoverlaybd%2Fredis%3Apull"
        );
    }

    #[test]
    fn commas_inside_quotes_and_spaces_are_kept() {
        let h = r#"bearer  realm="http://a/t", service="s", scope="repository:a/b:pull,push""#;
        let Challenge::Bearer(b) = parse_challenge(h).unwrap() else {
            panic!("not bearer")
        };
        assert_eq!(b.scope, "repository:a/b:pull,push");
        assert_eq!(b.service, "s");
    }

    #[test]
    fn basic_and_errors() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#).unwrap(),
            Challenge::Basic
        );
        assert_eq!(
            parse_challenge("Negotiate abc"),
            Err(AuthError::UnsupportedScheme("Negotiate".into()))
        );
        assert_eq!(
            parse_challenge(r#"Bearer service="s""#),
            Err(AuthError::MissingParameter("realm"))
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="",service="s""#),
            Err(AuthError::MissingParameter("realm"))
        );
        assert!(matches!(
            parse_challenge(r#"Bearer realm="unterminated"#),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            parse_challenge("Bearer =x"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn token_answers() {
        let t = parse_token_response(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(
            t,
            Token {
                token: "abc".into(),
                lifetime: Duration::from_secs(270)
            }
        );
        let t = parse_token_response(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!(t.token, "xyz");
        assert_eq!(t.lifetime, Duration::from_secs(54));
        assert!(parse_token_response(br#"{"token":""}"#).is_err());
        assert!(parse_token_response(b"not json").is_err());
    }

    #[test]
    fn refresh_token_form_is_encoded() {
        let b = BearerChallenge {
            realm: "https://r.example/oauth2/token".into(),
            service: "r.example".into(),
            scope: "repository:team/app:pull repository:x:pull".into(),
        };
        assert_eq!(
            b.refresh_token_form("a+b/c=d&e"),
            "grant_type=refresh_token&refresh_token=a%2Bb%2Fc%3Dd%26e&service=r.example\
             &scope=repository%3Ateam%2Fapp%3Apull%20repository%3Ax%3Apull\
             &client_id=overlaybd-target"
        );
        let no_scope = BearerChallenge {
            scope: String::new(),
            ..b
        };
        assert_eq!(
            no_scope.refresh_token_form("t"),
            "grant_type=refresh_token&refresh_token=t&service=r.example&client_id=overlaybd-target"
        );
    }

    #[test]
    fn basic_header_encodes_user_and_password() {
        assert_eq!(
            basic_header("username", "password"),
            "Basic dXNlcm5hbWU6cGFzc3dvcmQ="
        );
    }

    proptest::proptest! {
        #[test]
        fn challenge_parsing_never_panics(text in ".{0,80}", realm in "[a-z:/.0-9]{1,20}", scope in "[a-z:/,0-9 ]{0,20}") {
            let _ = parse_challenge(&text);
            let _ = parse_challenge(&format!("Bearer {text}"));
            let h = format!(r#"Bearer realm="{realm}",service="s",scope="{scope}""#);
            let Ok(Challenge::Bearer(b)) = parse_challenge(&h) else { panic!("{h}") };
            proptest::prop_assert_eq!((b.realm.as_str(), b.scope.as_str()), (realm.as_str(), scope.as_str()));
        }
    }
}
