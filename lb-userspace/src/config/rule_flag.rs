//! `--rule`: one forwarding rule on the command line, as `;`-separated `key=value` pairs, e.g.
//! `name=to-https;path-prefix=/;action=redirect:301:https://{host}{path}{query}`.
//!
//! Keys: `name`, `host` (comma list), `path`, `path-prefix`, `path-regex`, `method` (comma
//! list), `header` (`NAME:V1|V2`), `query` (`KEY:V1|V2`), `client` (comma list of CIDRs),
//! `rate-limit` (requests per second per client address for the requests the rule matches),
//! `action`: `forward` (the listener's group), `forward:GROUP` (a group of the config file),
//! `redirect:STATUS:LOCATION`,
//! `fixed:STATUS:CONTENT-TYPE:BODY`.
use super::ConfigError;
use super::values::{Refused, RequestRate, TextValue};
use crate::rules::{ActionSpec, PathMatch, RuleSpec};

const HELP: &str = "expected KEY=VALUE pairs separated by ';' with keys name, host, path, \
                    path-prefix, path-regex, method, header, query, client, rate-limit and action \
                    (forward[:GROUP] | redirect:STATUS:LOCATION | fixed:STATUS:CONTENT-TYPE:BODY)";

pub fn parse(value: &str, index: usize, default_group: &str) -> Result<RuleSpec, ConfigError> {
    let err = |problem: String| ConfigError::new("--rule", value, problem);
    let mut rule = RuleSpec {
        name: format!("rule-{}", index + 1),
        ..RuleSpec::default()
    };
    let mut action = None;
    for pair in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, v) = pair
            .split_once('=')
            .ok_or_else(|| err(format!("{pair:?}: {HELP}")))?;
        let list = || {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let named = |what: &str| {
            v.split_once(':')
                .map(|(n, vals)| {
                    (
                        n.trim().to_string(),
                        vals.split('|').map(|s| s.trim().to_string()).collect(),
                    )
                })
                .ok_or_else(|| err(format!("{key}={v:?}: expected {what}:VALUE|VALUE...")))
        };
        match key.trim() {
            "name" => rule.name = v.to_string(),
            "host" => rule.hosts.extend(list()),
            "path" => rule.paths.push(PathMatch::Exact(v.to_string())),
            "path-prefix" => rule.paths.push(PathMatch::Prefix(v.to_string())),
            "path-regex" => rule.paths.push(PathMatch::Regex(v.to_string())),
            "method" => rule.methods.extend(list()),
            "header" => rule.headers.push(named("NAME")?),
            "query" => rule.query.push(named("KEY")?),
            "client" => rule.client_cidrs.extend(list()),
            "action" => action = Some(parse_action(v, default_group).map_err(|r| err(r.0))?),
            "rate-limit" => {
                let rate = <RequestRate as TextValue>::parse(v.trim())
                    .map_err(|r| err(format!("rate-limit={v:?}: {}", r.0)))?;
                rule.rate_limit = Some(rate.0);
            }
            other => return Err(err(format!("unknown key {other:?}; {HELP}"))),
        }
    }
    rule.action = action.ok_or_else(|| err(format!("no action; {HELP}")))?;
    Ok(rule)
}

fn parse_action(v: &str, default_group: &str) -> Result<ActionSpec, Refused> {
    let status = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("status {s:?} is not a number"))
    };
    match v.split_once(':') {
        None if v == "forward" => Ok(ActionSpec::Forward {
            group: default_group.to_string(),
        }),
        Some(("forward", group)) if !group.is_empty() => Ok(ActionSpec::Forward {
            group: group.to_string(),
        }),
        Some(("redirect", rest)) => {
            let (code, location) = rest
                .split_once(':')
                .ok_or("expected redirect:STATUS:LOCATION")?;
            Ok(ActionSpec::Redirect {
                status: status(code)?,
                location: location.to_string(),
            })
        }
        Some(("fixed", rest)) => {
            let mut parts = rest.splitn(3, ':');
            let (Some(code), Some(content_type), Some(body)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err("expected fixed:STATUS:CONTENT-TYPE:BODY".into());
            };
            Ok(ActionSpec::Fixed {
                status: status(code)?,
                content_type: content_type.to_string(),
                body: body.to_string(),
            })
        }
        _ => Err(format!(
            "unknown action {v:?}: forward[:GROUP], redirect:STATUS:LOCATION or fixed:STATUS:CONTENT-TYPE:BODY"
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_from_flags() {
        let r = parse("name=api;host=api.example.com,*.api.example.com;path-prefix=/v1;method=GET,HEAD;header=x-env:prod|stage;action=forward", 0, "pool").expect("rule");
        assert_eq!(r.name, "api");
        assert_eq!(r.hosts.len(), 2);
        assert_eq!(
            r.headers,
            vec![(
                "x-env".to_string(),
                vec!["prod".to_string(), "stage".to_string()]
            )]
        );
        assert_eq!(
            r.action,
            ActionSpec::Forward {
                group: "pool".into()
            }
        );
        let r = parse(
            "path-prefix=/;action=redirect:301:https://{host}{path}{query}",
            4,
            "pool",
        )
        .expect("redirect");
        assert_eq!(r.name, "rule-5");
        assert_eq!(
            r.action,
            ActionSpec::Redirect {
                status: 301,
                location: "https://{host}{path}{query}".into()
            }
        );
        let r = parse(
            "path=/down;action=fixed:503:text/plain:back soon: 5 min",
            0,
            "pool",
        )
        .expect("fixed");
        assert_eq!(
            r.action,
            ActionSpec::Fixed {
                status: 503,
                content_type: "text/plain".into(),
                body: "back soon: 5 min".into()
            }
        );
        let r = parse("path=/login;rate-limit=20;action=forward", 0, "pool").expect("limited");
        assert_eq!(r.rate_limit, Some(20));
        for bad in [
            "host=a.com",
            "action=teleport",
            "colour=red;action=forward",
            "action=redirect:301",
            "path=/login;rate-limit=0;action=forward",
            "path=/login;rate-limit=lots;action=forward",
        ] {
            let e = parse(bad, 0, "pool").expect_err(bad);
            assert!(e.to_string().starts_with("--rule"), "{e}");
        }
    }
}
