//! The ACME task: the only writer of certificates. For each listener's names it keeps a
//! certificate: read from the state directory (where another node may have put it), else
//! ordered; renewed before it expires; retried with backoff when an order fails.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{Account, NewAccount};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tracing::{info, warn};

use super::order::order;
use super::store::Store;
use super::{Acme, CertStatus, DomainSet, Settings, renew_at, unix_now};
use crate::config::acme::AcmeConfig;
use crate::dataplane::error_chain;

/// The state directory is looked at this often for certificates another node renewed.
const RECHECK: Duration = Duration::from_secs(60);
/// While another node holds the lock, look again this soon.
const LOCKED_RETRY: Duration = Duration::from_secs(5);
/// The longest one order may take, all steps together: a CA that stops answering fails the
/// attempt (retried with backoff) rather than holding up the task.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Orders for one set are at least this far apart, whatever the certificates' lifetime.
const MIN_ORDER_GAP: Duration = Duration::from_secs(10);
/// Backoff after a failed order: the first retry, doubled each time up to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// Starts the task on `runtime`; it runs until `settings`' sender is dropped.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    acme: Arc<Acme>,
    settings: watch::Receiver<Settings>,
) {
    runtime.spawn(run(acme, settings));
}

/// A set as the task keeps it: at one CA, its names sorted (a set reordered in the file is the
/// same set; a set at another CA is another, ordered there rather than kept from the old one).
type SetKey = (String, Vec<String>);

fn set_key(config: &AcmeConfig, set: &DomainSet) -> SetKey {
    let mut names = set.names.clone();
    names.sort();
    names.dedup();
    (config.directory.clone(), names)
}

/// Each configured set's key, in the order of `current.sets`.
fn set_keys(current: &Settings) -> Vec<SetKey> {
    current
        .sets
        .iter()
        .map(|set| set_key(&current.config, set))
        .collect()
}

/// One set's state between rounds.
#[derive(Default)]
struct SetState {
    /// The certificate held, served for the set's names while the set is configured.
    key: Option<Arc<CertifiedKey>>,
    not_before: Option<i64>,
    not_after: Option<i64>,
    /// Why the state directory could not be used in the last round, if it could not.
    store_error: Option<String>,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    last_error: Option<String>,
    /// When this node last ordered the set successfully or not.
    ordered_at: Option<tokio::time::Instant>,
}

async fn run(acme: Arc<Acme>, mut settings: watch::Receiver<Settings>) {
    let mut account: Option<(AccountKey, Account)> = None;
    let mut states: HashMap<SetKey, SetState> = HashMap::new();
    loop {
        let current = settings.borrow_and_update().clone();
        let keys = set_keys(&current);
        let mut wake = tokio::time::Instant::now() + RECHECK;
        // Sets no longer configured are forgotten, and their certificates no longer served.
        states.retain(|key, _| keys.contains(key));
        publish(&acme, &current.sets, &keys, &states);
        match Store::open(&current.config.state_dir, &current.config.directory) {
            Err(e) => {
                let why = format!(
                    "state directory {}: {e}",
                    current.config.state_dir.display()
                );
                warn!(error = why, "ACME");
                for key in &keys {
                    states.entry(key.clone()).or_default().store_error = Some(why.clone());
                }
            }
            Ok(store) => {
                // Every certificate in the directory is served before any order is placed: an
                // order may wait minutes on a CA that does not answer.
                for (set, key) in current.sets.iter().zip(&keys) {
                    let state = states.entry(key.clone()).or_default();
                    state.store_error = None;
                    take_up_stored(&store, set, state);
                }
                publish(&acme, &current.sets, &keys, &states);
                for (set, key) in current.sets.iter().zip(&keys) {
                    let state = states.entry(key.clone()).or_default();
                    let next = keep(&store, &current.config, set, state, &mut account).await;
                    wake = wake.min(next);
                    // At once: a certificate just issued is not held back by the other sets'
                    // orders.
                    publish(&acme, &current.sets, &keys, &states);
                }
            }
        }
        acme.set_status(
            current
                .sets
                .iter()
                .zip(&keys)
                .map(|(set, key)| {
                    let st = states.get(key);
                    CertStatus {
                        listener: set.listener.clone(),
                        names: set.names.clone(),
                        not_after: st.and_then(|s| s.not_after),
                        renew_at: st
                            .and_then(|s| s.not_before.zip(s.not_after))
                            .map(|(b, a)| renew_at(b, a)),
                        last_error: st
                            .and_then(|s| s.store_error.clone().or_else(|| s.last_error.clone())),
                        failures: st.map_or(0, |s| s.failures),
                        retry_at: st.and_then(|s| s.retry_at).map(|at| {
                            unix_now()
                                + at.saturating_duration_since(tokio::time::Instant::now())
                                    .as_secs() as i64
                        }),
                    }
                })
                .collect(),
        );
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            changed = settings.changed() => if changed.is_err() { return },
        }
    }
}

/// Serves each configured set's certificate for its names, and nothing else: a name two sets
/// share gets the certificate that expires last; names of sets no longer configured get none
/// from ACME (the listener's own certificates answer them).
fn publish(acme: &Acme, sets: &[DomainSet], keys: &[SetKey], states: &HashMap<SetKey, SetState>) {
    let mut table: HashMap<String, (i64, Arc<CertifiedKey>)> = HashMap::new();
    for (set, key) in sets.iter().zip(keys) {
        let Some(state) = states.get(key) else {
            continue;
        };
        let (Some(key), Some(not_after)) = (&state.key, state.not_after) else {
            continue;
        };
        for name in &set.names {
            if table.get(name).is_none_or(|(held, _)| *held < not_after) {
                table.insert(name.clone(), (not_after, key.clone()));
            }
        }
    }
    acme.serve(table.into_iter().map(|(n, (_, k))| (n, k)).collect());
}

/// Takes up a certificate in the directory newer than the one served (this node's first
/// start, or another node's renewal).
fn take_up_stored(store: &Store, set: &DomainSet, state: &mut SetState) {
    match store.load(&set.names) {
        Ok(Some(stored)) if Some(stored.not_after) > state.not_after => {
            state.key = Some(stored.key);
            state.not_before = Some(stored.not_before);
            state.not_after = Some(stored.not_after);
            // Whoever ordered it, the set is served: this node's failures are over too.
            state.failures = 0;
            state.retry_at = None;
            state.last_error = None;
            info!(listener = set.listener, names = ?set.names, not_after = stored.not_after, "ACME certificate loaded");
        }
        Ok(_) => {}
        Err(e) => warn!(
            listener = set.listener,
            error = e,
            "ACME: unreadable certificate in the state directory; ordering a new one"
        ),
    }
}

/// Brings one set's certificate up to date, the directory's already taken up (see
/// [`take_up_stored`]); returns when it next needs looking at.
async fn keep(
    store: &Store,
    config: &AcmeConfig,
    set: &DomainSet,
    state: &mut SetState,
    account: &mut Option<(AccountKey, Account)>,
) -> tokio::time::Instant {
    let clock = tokio::time::Instant::now();
    let in_secs =
        |at: i64| clock + Duration::from_secs(u64::try_from(at - unix_now()).unwrap_or(0));
    if let (Some(b), Some(a)) = (state.not_before, state.not_after)
        && unix_now() < renew_at(b, a)
    {
        return in_secs(renew_at(b, a)).min(clock + RECHECK);
    }
    if let Some(at) = state.retry_at
        && at > clock
    {
        return at;
    }
    // However short the certificates the CA hands out, orders for one set are this far apart.
    if let Some(at) = state.ordered_at.map(|t| t + MIN_ORDER_GAP)
        && at > clock
    {
        return at;
    }
    let _lock = match store.try_lock() {
        Ok(Some(lock)) => lock,
        // Another node orders: its files are looked for again soon.
        Ok(None) => return clock + LOCKED_RETRY,
        Err(e) => {
            return failed(
                set,
                state,
                format!("the state directory's lock: {e}"),
                clock,
            );
        }
    };
    // Under the lock, the directory may already hold what the last holder ordered.
    if let Ok(Some(stored)) = store.load(&set.names)
        && Some(stored.not_after) > state.not_after
    {
        return clock;
    }
    info!(listener = set.listener, names = ?set.names, directory = config.directory, "ACME: ordering a certificate");
    let attempt = async {
        let acct = client(store, config, account).await?;
        order(acct, &set.names, store, config.challenge).await
    };
    let result = tokio::time::timeout(ORDER_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from the CA within {ORDER_TIMEOUT:?}")));
    state.ordered_at = Some(clock);
    // Served from what was written, read back as every node reads it, and written over the
    // pair in the directory only once it reads back whole.
    let installed =
        result.and_then(|issued| store.install(&set.names, &issued.chain_pem, &issued.key_pem));
    match installed {
        Ok(stored) => {
            state.key = Some(stored.key);
            state.not_before = Some(stored.not_before);
            state.not_after = Some(stored.not_after);
            info!(listener = set.listener, names = ?set.names, not_after = stored.not_after, "ACME certificate issued");
            state.failures = 0;
            state.retry_at = None;
            state.last_error = None;
            in_secs(renew_at(stored.not_before, stored.not_after))
                .min(clock + RECHECK)
                .max(clock + MIN_ORDER_GAP)
        }
        Err(e) => failed(set, state, e, clock),
    }
}

/// Records a failed attempt; returns when the next one is due (backoff).
fn failed(
    set: &DomainSet,
    state: &mut SetState,
    e: String,
    clock: tokio::time::Instant,
) -> tokio::time::Instant {
    state.failures = state.failures.saturating_add(1);
    let wait = BACKOFF_FIRST
        .saturating_mul(1 << state.failures.saturating_sub(1).min(12))
        .min(BACKOFF_MAX);
    warn!(listener = set.listener, names = ?set.names, error = e, retry_in = ?wait, "ACME order failed");
    state.last_error = Some(e);
    state.retry_at = Some(clock + wait);
    clock + wait
}

/// The ACME client's HTTPS, trusting every certificate of the `--acme-ca` bundle (instant-
/// acme's own `builder_with_root` reads only the first, so a bundle listing the CA's root
/// second, as during a CA's rollover, failed every order), and giving up on a connection
/// that is not made within 10 s.
fn http_client(
    ca: &std::path::Path,
) -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<bytes::Bytes>,
    >,
    String,
> {
    let roots = crate::tls::certs::load_ca_bundle(ca)
        .map_err(|e| format!("--acme-ca {}: {e}", ca.display()))?;
    let tls =
        crate::tls::client::client_config(Some(&roots)).map_err(|e| format!("ACME client: {e}"))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// What an account client is made for: a reload that changes any of it makes a new one (the
/// trust anchors of `--acme-ca` are in its HTTP client, read from the file as it is now: a
/// bundle replaced in place counts; the contact is at the CA).
#[derive(Clone, PartialEq, Eq)]
struct AccountKey {
    directory: String,
    ca: Option<(std::path::PathBuf, Vec<u8>)>,
    email: Option<String>,
}

/// The account at the configured directory: the one kept in the state directory (its
/// contact set to the configured one), else a new registration (kept there for next time).
async fn client<'a>(
    store: &Store,
    config: &AcmeConfig,
    account: &'a mut Option<(AccountKey, Account)>,
) -> Result<&'a Account, String> {
    let key = AccountKey {
        directory: config.directory.clone(),
        // Unreadable: the client cannot be made either, and says why.
        ca: config
            .ca
            .as_ref()
            .map(|p| (p.clone(), std::fs::read(p).unwrap_or_default())),
        email: config.email.clone(),
    };
    if account.as_ref().is_none_or(|(k, _)| *k != key) {
        let builder = match &config.ca {
            Some(ca) => Account::builder_with_http(Box::new(http_client(ca)?)),
            None => Account::builder().map_err(|e| format!("ACME client: {e}"))?,
        };
        let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let acct = match store.account(&config.directory)? {
            Some(credentials) => {
                let acct = builder
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| format!("account: {}", error_chain(&e)))?;
                // The address may have changed (or gone) since the account was registered: the
                // CA sends its expiry notices to the one it holds. A CA that refuses the
                // change still issues: the orders go on with the old contact.
                match acct.update_contacts(&contacts).await {
                    Ok(()) => info!(contact = contacts.join(","), "ACME account contact set"),
                    Err(e) => warn!(
                        error = %e,
                        contact = contacts.join(","),
                        "ACME: the CA did not take the account's new contact; it keeps the old one"
                    ),
                }
                acct
            }
            None => {
                let (acct, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        config.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| {
                        format!(
                            "registering an account at {}: {}",
                            config.directory,
                            error_chain(&e)
                        )
                    })?;
                store
                    .save_account(&config.directory, &credentials)
                    .map_err(|e| format!("saving the account: {e}"))?;
                acct
            }
        };
        *account = Some((key, acct));
    }
    account
        .as_ref()
        .map(|(_, a)| a)
        .ok_or_else(|| "no account".to_string())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::values::AcmeChallenge;
    use crate::tls::IssuedCerts;

    /// A certificate for `names`, valid far beyond any renewal: its chain and key as PEM.
    fn issued(names: &[&str]) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("names");
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn settings(dir: &std::path::Path, sets: &[(&str, &[&str])]) -> Settings {
        Settings {
            config: AcmeConfig {
                directory: "https://ca.test/directory".into(),
                email: None,
                state_dir: dir.to_path_buf(),
                ca: None,
                challenge: AcmeChallenge::TlsAlpn01,
            },
            sets: sets
                .iter()
                .map(|(listener, names)| DomainSet {
                    listener: listener.to_string(),
                    names: names.iter().map(|n| n.to_string()).collect(),
                })
                .collect(),
        }
    }

    fn held(key: &Arc<CertifiedKey>, not_after: i64) -> SetState {
        SetState {
            key: Some(key.clone()),
            not_before: Some(0),
            not_after: Some(not_after),
            ..SetState::default()
        }
    }

    fn served(acme: &Acme, name: &str) -> Option<Arc<CertifiedKey>> {
        acme.certificate(name)
    }

    #[test]
    fn only_configured_sets_are_served_and_a_shared_name_gets_the_later_certificate() {
        let dir = std::env::temp_dir();
        let acme = Acme::new(PathBuf::from("/nonexistent"));
        let store = Store::open(
            &dir.join(format!("acme-publish-{}", std::process::id())),
            "x",
        )
        .expect("store");
        let load = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let (chain, key) = issued(&names.iter().map(String::as_str).collect::<Vec<_>>());
            store.save(&names, &chain, &key).expect("save");
            store.load(&names).expect("load").expect("stored").key
        };
        let (k1, k2) = (load(&["a.test"]), load(&["b.test", "a.test"]));
        let both = settings(&dir, &[("l1", &["a.test"]), ("l2", &["b.test", "a.test"])]);
        let mut states = HashMap::new();
        states.insert(set_key(&both.config, &both.sets[0]), held(&k1, 100));
        states.insert(set_key(&both.config, &both.sets[1]), held(&k2, 200));
        publish(&acme, &both.sets, &set_keys(&both), &states);
        assert!(served(&acme, "a.test").is_some_and(|k| Arc::ptr_eq(&k, &k2)));
        assert!(served(&acme, "b.test").is_some_and(|k| Arc::ptr_eq(&k, &k2)));

        // l2 is removed: a.test goes back to l1's certificate, b.test has none.
        let one = settings(&dir, &[("l1", &["a.test"])]);
        publish(&acme, &one.sets, &set_keys(&one), &states);
        assert!(served(&acme, "a.test").is_some_and(|k| Arc::ptr_eq(&k, &k1)));
        assert!(served(&acme, "b.test").is_none());

        // Another CA: what the old one issued is not served for it.
        let mut moved = one.clone();
        moved.config.directory = "https://other.test/directory".into();
        publish(&acme, &moved.sets, &set_keys(&moved), &states);
        assert!(served(&acme, "a.test").is_none());
        let _ = std::fs::remove_dir_all(dir.join(format!("acme-publish-{}", std::process::id())));
    }

    #[tokio::test]
    async fn a_certificate_another_node_saved_ends_this_nodes_failures() {
        let dir = std::env::temp_dir().join(format!("acme-takeup-{}", std::process::id()));
        let current = settings(&dir, &[("l1", &["a.test"])]);
        let store = Store::open(&dir, &current.config.directory).expect("store");
        let mut state = SetState {
            failures: 3,
            last_error: Some("the CA said no".into()),
            retry_at: Some(tokio::time::Instant::now() + Duration::from_secs(600)),
            ..SetState::default()
        };
        let names = vec!["a.test".to_string()];
        let (chain, key) = issued(&["a.test"]);
        store.save(&names, &chain, &key).expect("save");
        take_up_stored(&store, &current.sets[0], &mut state);
        assert!(state.key.is_some() && state.not_after.is_some());
        assert_eq!(
            (state.failures, state.last_error, state.retry_at),
            (0, None, None)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_sets_files_follow_its_names_in_any_order_and_its_ca() {
        let dir = std::env::temp_dir().join(format!("acme-stem-{}", std::process::id()));
        let a = Store::open(&dir, "https://a.test/dir").expect("store");
        let b = Store::open(&dir, "https://b.test/dir").expect("store");
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            a.pair_path(&names(&["x.test", "w.test"])),
            a.pair_path(&names(&["w.test", "x.test"]))
        );
        assert_ne!(
            a.pair_path(&names(&["x.test"])),
            b.pair_path(&names(&["x.test"]))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
