//! Seeding straight from a live server: the target's agent connects to the source's
//! agent, presents a one-time token the conductor gave the source, and receives a copy
//! stream it unpacks as it arrives. No intermediate file, no object store.
//!
//! Wire: the target sends one line `TANDEM-SEED 1 <token>\n`; then the source sends
//! length-delimited frames: `H` + JSON header, `D` + data..., and finally either `E` +
//! JSON end (the copy is complete and consistent) or `X` + an error message. A
//! connection that ends without `E` is a failed copy, whatever arrived before it.
//!
//! With `[seed] tls_*` configured the connection is mutual TLS before the first byte:
//! the source proves it is the host the conductor named, the target proves it holds a
//! certificate from the same CA, and the copy (the whole database) is encrypted. The
//! token is still required: a certificate says who may connect, the token says which
//! copy the conductor asked for.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tandem_proto::{CommandError, Endpoint, Position, SeedSource};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::backup::{ensure_room, Scratch};
use crate::engine::{Engine, EngineError};
use crate::operations::{Phase, Progress};
use crate::Agent;

const HELLO: &str = "TANDEM-SEED 1 ";
/// Longest offer the conductor may make.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// A source that sends nothing for this long is considered gone.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
const FRAME_DATA: usize = 256 * 1024;

/// A seeding connection: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type Conn = Box<dyn Io>;
type Frames = FramedRead<ReadHalf<Conn>, LengthDelimitedCodec>;

/// Mutual TLS for seeding connections, loaded once at start so a bad file stops the
/// agent there and not at the first seeding.
#[derive(Clone)]
pub struct SeedTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for SeedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeedTls")
    }
}

impl SeedTls {
    /// `cert` and `key`: this agent's certificate chain and private key (PEM), used as
    /// the server certificate and as the client certificate; `ca`: the CA both sides'
    /// certificates must chain to.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<SeedTls> {
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("field `seed.tls_cert_file`: reading {}", cert.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "field `seed.tls_cert_file`: {} holds no certificate",
            cert.display()
        );
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("field `seed.tls_key_file`: reading {}", key.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for root in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("field `seed.tls_ca_file`: reading {}", ca.display()))?
        {
            let root = root
                .with_context(|| format!("field `seed.tls_ca_file`: reading {}", ca.display()))?;
            roots
                .add(root)
                .with_context(|| format!("field `seed.tls_ca_file`: {}", ca.display()))?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "field `seed.tls_ca_file`: {} holds no certificate",
            ca.display()
        );
        let roots = Arc::new(roots);
        // The ring provider lapin already brings, given explicitly rather than installed
        // process-wide.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .context("field `seed.tls_ca_file`")?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .context("fields `seed.tls_cert_file` and `seed.tls_key_file` do not make a pair")?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .context("fields `seed.tls_cert_file` and `seed.tls_key_file` do not make a pair")?;
        Ok(SeedTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// The source's estimate of the copy's size (its data directory).
    total_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct End {
    position: Option<Position>,
}

/// Tokens the conductor has issued for this source, each good for one connection.
pub(crate) struct SeedOffers {
    tokens: Mutex<HashMap<String, Instant>>,
    pub endpoint: Endpoint,
}

impl SeedOffers {
    pub fn new(endpoint: Endpoint) -> Self {
        SeedOffers {
            tokens: Mutex::new(HashMap::new()),
            endpoint,
        }
    }

    pub fn offer(&self, token: &str, ttl: Duration) -> Result<(), CommandError> {
        if token.len() < 16 || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CommandError::bad_request(
                "a seed token must be 16-256 printable characters",
            ));
        }
        let mut tokens = self.tokens.lock().expect("poisoned");
        let now = Instant::now();
        tokens.retain(|_, expires| *expires > now);
        tokens.insert(token.to_owned(), now + ttl.min(MAX_TTL));
        Ok(())
    }

    /// Takes a token: true once per offered, unexpired token.
    fn redeem(&self, token: &str) -> bool {
        let mut tokens = self.tokens.lock().expect("poisoned");
        matches!(tokens.remove(token), Some(expires) if expires > Instant::now())
    }
}

impl<E: Engine> Agent<E> {
    /// Accepts seeding connections until `stop`; each is served on its own task, so
    /// several replicas can be seeded at once.
    pub(crate) async fn serve_seeds(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) {
        loop {
            let (socket, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "seed listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let agent = self.clone();
            tokio::spawn(async move {
                match agent.serve_one_seed(socket).await {
                    Ok(bytes) => tracing::info!(%peer, bytes, "seed copy sent"),
                    Err(e) => tracing::warn!(%peer, error = %e, "seed copy not sent"),
                }
                crate::host::release_memory();
                tokio::time::sleep(crate::host::SETTLE).await;
                crate::host::release_memory();
            });
        }
    }

    async fn serve_one_seed(&self, socket: TcpStream) -> anyhow::Result<u64> {
        socket.set_nodelay(true)?;
        let conn: Conn = match &self.settings.seed_tls {
            None => Box::new(socket),
            Some(tls) => Box::new(
                tokio::time::timeout(Duration::from_secs(10), tls.acceptor.accept(socket))
                    .await
                    .context("TLS handshake timed out")?
                    .context("TLS handshake failed")?,
            ),
        };
        let (read, write) = tokio::io::split(conn);
        let mut lines = BufReader::new(read.take(512));
        let mut hello = String::new();
        tokio::time::timeout(Duration::from_secs(10), lines.read_line(&mut hello)).await??;
        let mut out = FramedWrite::new(write, LengthDelimitedCodec::new());
        let token = hello.trim_end().strip_prefix(HELLO).unwrap_or("");
        if !self.seed.redeem(token) {
            out.send(frame(
                b'X',
                b"the seed token is unknown, expired or already used",
            ))
            .await?;
            anyhow::bail!("refused a connection with an unknown, expired or used token");
        }
        let header = Header {
            total_bytes: self.engine.copy_size(),
        };
        out.send(frame(b'H', &serde_json::to_vec(&header)?)).await?;

        let mut scratch = Scratch::new();
        let work = scratch.add(
            self.settings
                .engine
                .backup_dir
                .join(format!(".seed-{}", uuid::Uuid::new_v4())),
        );
        let mut stream = match self.engine.backup_stream(&work, None).await {
            Ok(s) => s,
            Err(e) => {
                out.send(frame(b'X', e.to_string().as_bytes())).await?;
                return Err(e.into());
            }
        };
        let mut sent = 0u64;
        let mut buf = BytesMut::with_capacity(FRAME_DATA + 1);
        // The target sends nothing after its hello: a read that ends is the target gone
        // (it failed, or was cancelled), and the copy stops at once rather than when
        // the next frame finds the connection closed, which a stuck copy never sends.
        let mut peer = lines.into_inner().into_inner();
        let mut probe = [0u8; 1];
        let target_gone = peer.read(&mut probe);
        tokio::pin!(target_gone);
        loop {
            buf.clear();
            buf.put_u8(b'D');
            let mut chunk = (&mut stream.output).take(FRAME_DATA as u64);
            let n = tokio::select! {
                n = tokio::time::timeout(IDLE_LIMIT, chunk.read_buf(&mut buf)) => {
                    n.map_err(|_| anyhow::anyhow!("the copy produced nothing for {IDLE_LIMIT:?}"))??
                }
                _ = &mut target_gone => anyhow::bail!("the target closed the connection"),
            };
            if n == 0 {
                break;
            }
            sent += n as u64;
            // A target that stops reading must not hold the copy (and mariabackup's
            // scratch space) here for ever.
            tokio::time::timeout(IDLE_LIMIT, out.send(buf.split().freeze()))
                .await
                .map_err(|_| anyhow::anyhow!("the target took nothing for {IDLE_LIMIT:?}"))??;
        }
        match stream.finish.await {
            Ok(end) => {
                let end = End {
                    position: end.position,
                };
                out.send(frame(b'E', &serde_json::to_vec(&end)?)).await?;
                out.into_inner().shutdown().await?;
                Ok(sent)
            }
            Err(e) => {
                out.send(frame(b'X', e.to_string().as_bytes())).await?;
                Err(e.into())
            }
        }
    }

    /// Replaces this server's data with a live copy of `source`.
    pub(crate) async fn seed_from(
        &self,
        source: &SeedSource,
        progress: &Progress,
    ) -> Result<Position, CommandError> {
        let token = self.open(&source.token, "the seed token")?;
        progress.set_phase(Phase::Connecting);
        let at = format!("{} at {}:{}", source.instance, source.host, source.port);
        let socket = tokio::time::timeout(
            Duration::from_secs(10),
            TcpStream::connect((source.host.as_str(), source.port)),
        )
        .await
        .map_err(|_| {
            CommandError::bad_request(format!("cannot reach the seed source {at}: timed out"))
        })?
        .map_err(|e| {
            CommandError::bad_request(format!("cannot reach the seed source {at}: {e}"))
        })?;
        socket.set_nodelay(true).ok();
        let conn: Conn = match &self.settings.seed_tls {
            None => Box::new(socket),
            Some(tls) => {
                let name = ServerName::try_from(source.host.clone()).map_err(|e| {
                    CommandError::bad_request(format!(
                        "the seed source host {:?} is not a valid TLS name: {e}",
                        source.host
                    ))
                })?;
                Box::new(
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        tls.connector.connect(name, socket),
                    )
                    .await
                    .map_err(|_| {
                        refused(format!("TLS handshake with the seed source {at} timed out"))
                    })?
                    .map_err(|e| {
                        refused(format!(
                            "TLS handshake with the seed source {at} failed: {e} \
                                 (both agents need `[seed] tls_*` from the same CA)"
                        ))
                    })?,
                )
            }
        };
        let (read, mut write) = tokio::io::split(conn);
        write
            .write_all(format!("{HELLO}{}\n", token.expose()).as_bytes())
            .await
            .map_err(|e| refused(format!("the seed source {at} closed the connection: {e}")))?;
        let mut frames = FramedRead::new(
            read,
            LengthDelimitedCodec::builder()
                .max_frame_length(4 << 20)
                .new_codec(),
        );
        let first = next_frame(&mut frames, &at).await.map_err(|e| {
            if self.settings.seed_tls.is_some() {
                return e;
            }
            refused(format!(
                "{} (if the source requires TLS, this agent needs `[seed] tls_*` too)",
                e.message
            ))
        })?;
        match first {
            (b'H', body) => {
                let header: Header = serde_json::from_slice(&body)
                    .map_err(|e| refused(format!("the seed source {at} sent a bad header: {e}")))?;
                progress
                    .bytes_total
                    .store(header.total_bytes, std::sync::atomic::Ordering::Relaxed);
                ensure_room(
                    &self.engine.staging_dir("tandem-seed"),
                    header.total_bytes,
                    &format!("a copy of {at}"),
                )?;
            }
            (b'X', body) => {
                return Err(refused(format!(
                    "the seed source {at} refused: {}",
                    String::from_utf8_lossy(&body)
                )))
            }
            (kind, _) => {
                return Err(refused(format!(
                    "the seed source {at} sent frame {:?} before its header",
                    kind as char
                )))
            }
        }

        progress.set_phase(Phase::Copying);
        let mut scratch = Scratch::new();
        let dir = scratch.add(self.engine.staging_dir("tandem-seed"));
        let end: Arc<Mutex<Option<Result<End, String>>>> = Arc::default();
        let data = {
            let end = end.clone();
            let at = at.clone();
            futures_util::stream::unfold(Some(frames), move |frames| {
                let end = end.clone();
                let at = at.clone();
                async move {
                    let mut frames = frames?;
                    match next_frame(&mut frames, &at).await {
                        Ok((b'D', body)) => Some((Ok(body), Some(frames))),
                        Ok((b'E', body)) => {
                            let parsed = serde_json::from_slice::<End>(&body)
                                .map_err(|e| format!("the seed source {at} sent a bad end: {e}"));
                            *end.lock().expect("poisoned") = Some(parsed);
                            None
                        }
                        Ok((b'X', body)) => Some((
                            Err(std::io::Error::other(format!(
                                "the seed source {at} failed: {}",
                                String::from_utf8_lossy(&body)
                            ))),
                            None,
                        )),
                        Ok((kind, _)) => Some((
                            Err(std::io::Error::other(format!(
                                "the seed source {at} sent an unknown frame {:?}",
                                kind as char
                            ))),
                            None,
                        )),
                        Err(e) => Some((Err(std::io::Error::other(e.message)), None)),
                    }
                }
            })
        };
        let mut reader = tokio_util::io::StreamReader::new(Box::pin(data));
        self.engine.unpack(&mut reader, &dir, progress).await?;
        match end.lock().expect("poisoned").take() {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(refused(e)),
            None => {
                return Err(refused(format!(
                    "the copy from {at} ended before it was complete"
                )))
            }
        }
        let position = self.prepare_and_install(&dir, &[], progress).await?;
        drop(scratch);
        Ok(position)
    }
}

fn frame(kind: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 1);
    b.put_u8(kind);
    b.put_slice(body);
    b.freeze()
}

/// The next frame as (kind, whole frame), with the idle limit.
async fn next_frame(frames: &mut Frames, at: &str) -> Result<(u8, Bytes), CommandError> {
    match tokio::time::timeout(IDLE_LIMIT, frames.next()).await {
        Err(_) => Err(refused(format!(
            "the seed source {at} sent nothing for {IDLE_LIMIT:?}"
        ))),
        Ok(None) => Err(refused(format!(
            "the seed source {at} closed the connection before the copy was complete"
        ))),
        Ok(Some(Err(e))) => Err(refused(format!("the connection to {at} broke: {e}"))),
        Ok(Some(Ok(f))) if f.is_empty() => Err(refused(format!("{at} sent an empty frame"))),
        Ok(Some(Ok(f))) => {
            let f = f.freeze();
            Ok((f[0], f.slice(1..)))
        }
    }
}

fn refused(message: String) -> CommandError {
    CommandError::from(EngineError::Refused(message))
}
