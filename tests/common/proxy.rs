//! A fault-injecting loopback proxy between walvault and the S3 server, for the
//! fault tests. It carries one request per client connection (it asks the server
//! to close after each response), so a fault can be chosen for each request:
//! refuse connections, answer 500/503 SlowDown, stall past the client's timeout,
//! or cut a response half way. It can also record every request it passes
//! (head and body), so a test can check what walvault puts on the wire, answer
//! chosen requests itself (a service feature the emulator lacks), and add a
//! header to HEAD responses. A thread of the test process, stopped on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Every request passes.
    None,
    /// The port is closed: connections are refused.
    Refuse,
    /// This share of requests gets a 503 SlowDown.
    SlowDown(f64),
    /// This share of requests gets a 500 InternalError.
    InternalError(f64),
    /// This share of requests gets no answer until the proxy stops or 60 s pass.
    Stall(f64),
    /// This share of responses is cut half way (the request did reach the server).
    Cut(f64),
}

/// One request as it went to the server.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as on the request line.
    pub target: String,
    /// Header names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query parameter names of the target (`?uploads`, `?partNumber=1&uploadId=x`).
    pub fn query_has(&self, name: &str) -> bool {
        self.target
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv.split('=').next() == Some(name)))
    }
}

/// A request the proxy answers itself: status and body.
type Answer = (String, u16, String);

struct Shared {
    record: Mutex<Option<Vec<Recorded>>>,
    /// Requests whose target contains the first field get this answer.
    answers: Mutex<Vec<Answer>>,
    /// A header line added to every HEAD response.
    head_header: Mutex<Option<String>>,
    fault: Mutex<(Fault, u64)>,
    stop: AtomicBool,
    requests: AtomicU64,
    faulted: AtomicU64,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream` (host:port).
    pub fn start(upstream: &str) -> FaultProxy {
        // Port 0: the kernel picks a free port as it binds, so no other
        // test can take it between choosing and binding.
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the proxy port");
        let port = listener.local_addr().expect("the proxy's port").port();
        let shared = Arc::new(Shared {
            record: Mutex::new(None),
            answers: Mutex::new(Vec::new()),
            head_header: Mutex::new(None),
            fault: Mutex::new((Fault::None, 0x9E37_79B9_7F4A_7C15)),
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            faulted: AtomicU64::new(0),
        });
        let (s, up) = (shared.clone(), upstream.to_string());
        let accept = std::thread::spawn(move || accept_loop(Some(listener), port, &up, &s));
        FaultProxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, fault: Fault) {
        self.shared.fault.lock().unwrap().0 = fault;
    }

    /// Starts recording every request passed on (and forgets earlier ones).
    pub fn record(&self) {
        *self.shared.record.lock().unwrap() = Some(Vec::new());
    }

    /// The requests recorded so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared
            .record
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default()
    }

    /// Answers every request whose target contains `target` with `status` and
    /// `body` (XML) instead of passing it on; a later call for the same
    /// `target` replaces the answer. Such requests are recorded too.
    pub fn answer(&self, target: &str, status: u16, body: &str) {
        let mut a = self.shared.answers.lock().unwrap();
        a.retain(|(t, _, _)| t != target);
        a.push((target.to_string(), status, body.to_string()));
    }

    /// Passes requests whose target contains `target` on again.
    pub fn pass(&self, target: &str) {
        self.shared
            .answers
            .lock()
            .unwrap()
            .retain(|(t, _, _)| t != target);
    }

    /// Adds `name: value` to every HEAD response passed on (`None`: stop).
    pub fn head_header(&self, header: Option<(&str, &str)>) {
        *self.shared.head_header.lock().unwrap() = header.map(|(k, v)| format!("{k}: {v}"));
    }

    /// Requests seen and requests given a fault so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.requests.load(Ordering::Relaxed),
            self.shared.faulted.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(mut listener: Option<TcpListener>, port: u16, upstream: &str, s: &Arc<Shared>) {
    while !s.stop.load(Ordering::Relaxed) {
        let refuse = s.fault.lock().unwrap().0 == Fault::Refuse;
        if refuse {
            // Closing the socket is what makes the kernel refuse connections.
            listener = None;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        if listener.is_none() {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let l = listener.as_ref().expect("bound above");
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((client, _)) => {
                let (s, up) = (s.clone(), upstream.to_string());
                std::thread::spawn(move || {
                    let _ = serve(client, &up, &s);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The fault for the next request: a share of them, by a fixed pseudo-random sequence.
fn pick(s: &Shared) -> Fault {
    let mut g = s.fault.lock().unwrap();
    let (fault, state) = &mut *g;
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let roll = (*state >> 11) as f64 / (1u64 << 53) as f64;
    let share = match *fault {
        Fault::None | Fault::Refuse => return Fault::None,
        Fault::SlowDown(p) | Fault::InternalError(p) | Fault::Stall(p) | Fault::Cut(p) => p,
    };
    if roll < share {
        *fault
    } else {
        Fault::None
    }
}

/// Reads up to the end of an HTTP head; returns head and any bytes after it.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(at + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > 256 * 1024 {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with its Connection header replaced by `Connection: close`.
fn closing(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn serve(mut client: TcpStream, upstream: &str, s: &Shared) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let Some((head, rest)) = read_head(&mut client)? else {
        return Ok(());
    };
    s.requests.fetch_add(1, Ordering::Relaxed);
    let first_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let answer = s
        .answers
        .lock()
        .unwrap()
        .iter()
        .find(|(t, _, _)| first_line.contains(t.as_str()))
        .cloned();
    if let Some((_, status, text)) = answer {
        let (head, body) = read_body(&mut client, head, rest)?;
        record(s, &head, &body);
        let resp = format!(
            "HTTP/1.1 {status} Answered\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
        client.write_all(resp.as_bytes())?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let add = s
        .head_header
        .lock()
        .unwrap()
        .clone()
        .filter(|_| first_line.starts_with("HEAD "));
    if let Some(line) = add {
        let mut up = TcpStream::connect(upstream)?;
        up.write_all(&closing(&head))?;
        up.write_all(&rest)?;
        if let Some((resp, more)) = read_head(&mut up)? {
            let text = String::from_utf8_lossy(&resp);
            let text = text.trim_end_matches("\r\n");
            client.write_all(format!("{text}\r\n{line}\r\n\r\n").as_bytes())?;
            client.write_all(&more)?;
        }
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let fault = pick(s);
    if fault != Fault::None {
        s.faulted.fetch_add(1, Ordering::Relaxed);
    }
    match fault {
        Fault::SlowDown(_) | Fault::InternalError(_) => {
            let (status, code, msg) = if matches!(fault, Fault::SlowDown(_)) {
                (
                    "503 Slow Down",
                    "SlowDown",
                    "Please reduce your request rate.",
                )
            } else {
                (
                    "500 Internal Server Error",
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                )
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{msg}</Message><RequestId>fault-proxy</RequestId></Error>"
            );
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(resp.as_bytes())?;
            client.shutdown(Shutdown::Write)?;
            // Read what the client still sends, so closing does not reset the
            // connection before it has read the answer.
            client.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut sink = [0u8; 65536];
            while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
            Ok(())
        }
        Fault::Stall(_) => {
            let t = Instant::now();
            while !s.stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
        Fault::None if s.record.lock().unwrap().is_some() => {
            let (head, body) = read_body(&mut client, head, rest)?;
            record(s, &head, &body);
            let mut up = TcpStream::connect(upstream)?;
            up.write_all(&closing(&head))?;
            up.write_all(&body)?;
            std::io::copy(&mut up, &mut client)?;
            let _ = client.shutdown(Shutdown::Both);
            Ok(())
        }
        Fault::None | Fault::Cut(_) | Fault::Refuse => {
            let mut up = TcpStream::connect(upstream)?;
            up.write_all(&closing(&head))?;
            up.write_all(&rest)?;
            // The rest of the request body, copied while the response comes back.
            let (mut c_in, mut u_out) = (client.try_clone()?, up.try_clone()?);
            let body = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut u_out);
            });
            let r = if let Fault::Cut(_) = fault {
                cut_response(&mut up, &mut client)
            } else {
                std::io::copy(&mut up, &mut client).map(|_| ())
            };
            let _ = client.shutdown(Shutdown::Both);
            let _ = up.shutdown(Shutdown::Both);
            let _ = body.join();
            r
        }
    }
}

/// The whole request body (by Content-Length). A client waiting for
/// `100 Continue` gets it from the proxy, and the Expect header is dropped.
fn read_body(
    client: &mut TcpStream,
    head: Vec<u8>,
    mut body: Vec<u8>,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let head = if text.contains("\r\nexpect: 100-continue") {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        let kept: Vec<&str> = std::str::from_utf8(&head)
            .unwrap_or("")
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("expect:"))
            .collect();
        kept.join("\r\n").into_bytes()
    } else {
        head
    };
    let want = content_length(&head).unwrap_or(0);
    let mut chunk = [0u8; 65536];
    while body.len() < want {
        let n = client.read(&mut chunk[..(want - body.len()).min(65536)])?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

fn record(s: &Shared, head: &[u8], body: &[u8]) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if let Some(r) = s.record.lock().unwrap().as_mut() {
        r.push(Recorded {
            method,
            target,
            headers,
            body: body.to_vec(),
        });
    }
}

/// Passes on the response head and half of its body (or half of the head when
/// it has no body), then stops.
fn cut_response(up: &mut TcpStream, client: &mut TcpStream) -> std::io::Result<()> {
    let Some((head, rest)) = read_head(up)? else {
        return Ok(());
    };
    match content_length(&head) {
        Some(len) if len > 1 => {
            client.write_all(&head)?;
            let mut left = len / 2;
            let first = rest.len().min(left);
            client.write_all(&rest[..first])?;
            left -= first;
            let mut chunk = [0u8; 65536];
            while left > 0 {
                let n = up.read(&mut chunk[..left.min(65536)])?;
                if n == 0 {
                    break;
                }
                client.write_all(&chunk[..n])?;
                left -= n;
            }
        }
        _ => client.write_all(&head[..head.len() / 2])?,
    }
    client.flush()
}
