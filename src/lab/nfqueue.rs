//! Packet loss and latency on a lab node's link without the kernel's `netem` qdisc (which not
//! every kernel this runs on has): iptables hands each packet of the node's interface to a
//! netfilter queue, and a worker process bound to that queue drops a share of them and lets the
//! others through after a fixed delay.
//!
//! The worker speaks nfnetlink_queue directly (a netlink socket, three message kinds: bind the
//! queue, receive a packet's id, give its verdict), so the lab needs no C library. It asks only
//! for packet metadata, never payloads, and sets the queue to fail open: if it falls behind,
//! the kernel passes packets instead of dropping them, so the worker can only add the faults it
//! was asked for.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_NO_ENOBUFS: libc::c_int = 5;
/// Packets the kernel holds for the worker before it passes them unqueued (fail open).
const QUEUE_LENGTH: u32 = 20_000;
const HEADER_LENGTH: usize = 16;

/// What becomes of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

/// The fault: a share of packets lost, the rest delayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Impairment {
    /// Percent of packets dropped, 0–100, each packet independently (as `netem loss`).
    pub loss_percent: u8,
    /// Added to every packet that is not dropped (as `netem delay`, without jitter).
    pub delay: Duration,
}

/// Decides each packet's fate and when: drops at once, accepts after the delay, in arrival
/// order (the delay is fixed, so the order is kept as on a real link).
#[derive(Debug)]
pub struct Shaper {
    impairment: Impairment,
    random: u64,
    pending: VecDeque<(Instant, u32)>,
}

impl Shaper {
    pub fn new(impairment: Impairment, seed: u64) -> Shaper {
        Shaper {
            impairment,
            // xorshift must not start at zero.
            random: seed | 1,
            pending: VecDeque::new(),
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for choosing which packets a test link loses.
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        self.random.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A packet arrived at `now`: its verdict now, or `None` when it waits for [`Shaper::due`].
    pub fn arrive(&mut self, id: u32, now: Instant) -> Option<Verdict> {
        if self.impairment.loss_percent > 0
            && self.next_random() % 100 < u64::from(self.impairment.loss_percent)
        {
            return Some(Verdict::Drop);
        }
        if self.impairment.delay.is_zero() {
            return Some(Verdict::Accept);
        }
        self.pending.push_back((now + self.impairment.delay, id));
        None
    }

    /// The packets whose delay is over at `now`, to accept, oldest first.
    pub fn due(&mut self, now: Instant) -> Vec<u32> {
        let mut ids = Vec::new();
        while let Some(&(at, id)) = self.pending.front() {
            if at > now {
                break;
            }
            ids.push(id);
            self.pending.pop_front();
        }
        ids
    }

    /// When the next waiting packet is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|&(at, _)| at)
    }
}

/// Append a netlink attribute (length, type, payload, padding to 4 bytes).
fn attribute(message: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let length = 4 + payload.len();
    message.extend_from_slice(&(length as u16).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(payload);
    message.resize(message.len().next_multiple_of(4), 0);
}

/// A queue message: netlink header, nfgenmsg naming the queue, then the attributes.
fn message(kind: u16, flags: u16, queue: u16, attributes: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut message = vec![0; HEADER_LENGTH];
    message[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
    // nfgenmsg: family AF_UNSPEC, version 0, the queue number in network order.
    message.extend_from_slice(&[0, 0]);
    message.extend_from_slice(&queue.to_be_bytes());
    for (kind, payload) in attributes {
        attribute(&mut message, *kind, payload);
    }
    let length = message.len() as u32;
    message[0..4].copy_from_slice(&length.to_ne_bytes());
    message
}

/// Bind `queue`, ask for metadata only, a long queue that fails open.
pub fn config_messages(queue: u16) -> Vec<Vec<u8>> {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    let bind = vec![NFQNL_CFG_CMD_BIND, 0, 0, libc::AF_INET as u8];
    let mut params = 0u32.to_be_bytes().to_vec();
    params.push(NFQNL_COPY_META);
    vec![
        message(NFQNL_MSG_CONFIG, flags, queue, &[(NFQA_CFG_CMD, bind)]),
        message(
            NFQNL_MSG_CONFIG,
            flags,
            queue,
            &[
                (NFQA_CFG_PARAMS, params),
                (NFQA_CFG_QUEUE_MAXLEN, QUEUE_LENGTH.to_be_bytes().to_vec()),
                (NFQA_CFG_FLAGS, NFQA_CFG_F_FAIL_OPEN.to_be_bytes().to_vec()),
                (NFQA_CFG_MASK, NFQA_CFG_F_FAIL_OPEN.to_be_bytes().to_vec()),
            ],
        ),
    ]
}

/// The verdict on packet `id` of `queue`.
pub fn verdict_message(queue: u16, id: u32, verdict: Verdict) -> Vec<u8> {
    let code = match verdict {
        Verdict::Accept => NF_ACCEPT,
        Verdict::Drop => NF_DROP,
    };
    let mut header = code.to_be_bytes().to_vec();
    header.extend_from_slice(&id.to_be_bytes());
    message(
        NFQNL_MSG_VERDICT,
        NLM_F_REQUEST,
        queue,
        &[(NFQA_VERDICT_HDR, header)],
    )
}

/// What one received netlink message says.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A queued packet's id.
    Packet(u32),
    /// An acknowledgement (0) or an error (a negative errno).
    Ack(i32),
    Other,
}

/// Split a datagram into its netlink messages and read each.
pub fn parse(datagram: &[u8]) -> Vec<Received> {
    let mut found = Vec::new();
    let mut rest = datagram;
    while rest.len() >= HEADER_LENGTH {
        let length = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        if length < HEADER_LENGTH || length > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
        let body = &rest[HEADER_LENGTH..length];
        found.push(if kind == NLMSG_ERROR && body.len() >= 4 {
            Received::Ack(i32::from_ne_bytes(body[0..4].try_into().unwrap()))
        } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            packet_id(body).map_or(Received::Other, Received::Packet)
        } else {
            Received::Other
        });
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    found
}

/// The id in a packet message's body (nfgenmsg, then attributes).
fn packet_id(body: &[u8]) -> Option<u32> {
    let mut rest = body.get(4..)?;
    while rest.len() >= 4 {
        let length = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if length < 4 || length > rest.len() {
            return None;
        }
        if kind == NFQA_PACKET_HDR && length >= 8 {
            return Some(u32::from_be_bytes(rest[4..8].try_into().unwrap()));
        }
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    None
}

/// A bound netfilter queue.
pub struct Queue {
    socket: OwnedFd,
    number: u16,
}

impl Queue {
    /// Open a netlink socket in the current network namespace and bind queue `number`.
    pub fn bind(number: u16) -> io::Result<Queue> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        let queue = Queue { socket, number };
        // Bursts must not overflow the socket: a message lost there strands its packet.
        queue.set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
        queue.set_option(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)?;
        // The kernel acknowledges at once; a bind that hears nothing gives up instead of
        // leaving `pgha lab impair` waiting for "ready".
        queue.set_receive_timeout(Some(Duration::from_secs(5)))?;
        // SAFETY: a zeroed sockaddr_nl is valid; the kernel picks the port id.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `address` is a valid sockaddr_nl of the given size.
        let bound = unsafe {
            libc::bind(
                queue.socket.as_raw_fd(),
                (&address as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        for config in config_messages(number) {
            queue.send(&config)?;
            queue.expect_ack()?;
        }
        queue.set_receive_timeout(None)?;
        Ok(queue)
    }

    fn set_receive_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = timeout.unwrap_or_default();
        let value = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        self.set_option(libc::SOL_SOCKET, libc::SO_RCVTIMEO, value)
    }

    fn set_option<T>(&self, level: libc::c_int, name: libc::c_int, value: T) -> io::Result<()> {
        // SAFETY: the option value lives through the call, its size is given.
        let result = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                level,
                name,
                (&value as *const T).cast(),
                std::mem::size_of::<T>() as u32,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for its length; netlink sends to the kernel by default.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn expect_ack(&self) -> io::Result<()> {
        let mut buffer = vec![0u8; 8192];
        loop {
            let length = self.receive(&mut buffer, 0)?;
            for received in parse(&buffer[..length]) {
                if let Received::Ack(code) = received {
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
            }
        }
    }

    fn receive(&self, buffer: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: the buffer is valid and writable for its length.
        let length = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                flags,
            )
        };
        if length < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(length as usize)
    }

    fn give(&self, id: u32, verdict: Verdict) -> io::Result<()> {
        self.send(&verdict_message(self.number, id, verdict))
    }

    /// Shape the queue's packets until the process is stopped.
    pub fn run(&self, shaper: &mut Shaper) -> io::Result<()> {
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let now = Instant::now();
            for id in shaper.due(now) {
                self.give(id, Verdict::Accept)?;
            }
            let wait = shaper.next_due().map_or(-1, |at| {
                let left = at.saturating_duration_since(now);
                // Round up: waking early only loops once more.
                left.as_micros().div_ceil(1000) as libc::c_int
            });
            let mut poll = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut poll, 1, wait) } < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if poll.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                let length = match self.receive(&mut buffer, libc::MSG_DONTWAIT) {
                    Ok(length) => length,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => continue,
                    Err(error) => return Err(error),
                };
                let arrived = Instant::now();
                for received in parse(&buffer[..length]) {
                    if let Received::Packet(id) = received {
                        if let Some(verdict) = shaper.arrive(id, arrived) {
                            self.give(id, verdict)?;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_message_is_laid_out_as_the_kernel_reads_it() {
        let message = verdict_message(12, 0x0102_0304, Verdict::Accept);
        assert_eq!(message.len(), 16 + 4 + 4 + 8);
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()), 32);
        assert_eq!(
            u16::from_ne_bytes(message[4..6].try_into().unwrap()),
            0x0301
        );
        assert_eq!(
            u16::from_ne_bytes(message[6..8].try_into().unwrap()),
            NLM_F_REQUEST
        );
        // nfgenmsg: AF_UNSPEC, version 0, queue 12 big-endian.
        assert_eq!(&message[16..20], &[0, 0, 0, 12]);
        // The attribute: length 12, type NFQA_VERDICT_HDR, verdict 1 and the id big-endian.
        assert_eq!(u16::from_ne_bytes(message[20..22].try_into().unwrap()), 12);
        assert_eq!(u16::from_ne_bytes(message[22..24].try_into().unwrap()), 2);
        assert_eq!(&message[24..32], &[0, 0, 0, 1, 1, 2, 3, 4]);
        assert_eq!(
            &verdict_message(12, 7, Verdict::Drop)[24..28],
            &[0, 0, 0, 0]
        );
    }

    #[test]
    fn config_binds_the_queue_and_asks_for_metadata_failing_open() {
        let messages = config_messages(3);
        assert_eq!(messages.len(), 2);
        for message in &messages {
            assert_eq!(
                u16::from_ne_bytes(message[4..6].try_into().unwrap()),
                0x0302
            );
            assert_eq!(
                u16::from_ne_bytes(message[6..8].try_into().unwrap()),
                NLM_F_REQUEST | NLM_F_ACK
            );
            assert_eq!(
                u32::from_ne_bytes(message[0..4].try_into().unwrap()) as usize,
                message.len()
            );
        }
        // Bind: command 1.
        assert_eq!(&messages[0][20..24], &[8, 0, 1, 0]);
        assert_eq!(messages[0][24], NFQNL_CFG_CMD_BIND);
        // Params: copy range 0, mode META, padded to 12 bytes.
        assert_eq!(&messages[1][20..24], &[9, 0, 2, 0]);
        assert_eq!(&messages[1][24..29], &[0, 0, 0, 0, NFQNL_COPY_META]);
        assert_eq!(messages[1].len(), 20 + 12 + 8 + 8 + 8);
    }

    #[test]
    fn packets_and_acks_are_read_from_one_datagram() {
        // A packet message: header, nfgenmsg, a mark attribute, then the packet header.
        let packet = message(
            NFQNL_MSG_PACKET,
            0,
            1,
            &[
                (6, vec![0, 0, 0, 9]),
                (NFQA_PACKET_HDR, vec![0, 0, 0x10, 0x20, 0x08, 0x00, 3]),
            ],
        );
        let mut ack = vec![0u8; HEADER_LENGTH + 4];
        let ack_length = ack.len() as u32;
        ack[0..4].copy_from_slice(&ack_length.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-16i32).to_ne_bytes());
        let mut datagram = packet.clone();
        datagram.extend_from_slice(&ack);
        assert_eq!(
            parse(&datagram),
            vec![Received::Packet(0x1020), Received::Ack(-16)]
        );
        // A truncated message is not read past its end.
        assert_eq!(parse(&packet[..packet.len() - 4]), vec![]);
    }

    #[test]
    fn the_shaper_delays_in_order_and_drops_the_asked_share() {
        let start = Instant::now();
        let delay = Duration::from_millis(300);
        let mut shaper = Shaper::new(
            Impairment {
                loss_percent: 0,
                delay,
            },
            7,
        );
        assert_eq!(shaper.arrive(1, start), None);
        assert_eq!(shaper.arrive(2, start + Duration::from_millis(10)), None);
        assert_eq!(shaper.next_due(), Some(start + delay));
        assert!(shaper.due(start + Duration::from_millis(299)).is_empty());
        assert_eq!(shaper.due(start + delay), vec![1]);
        assert_eq!(shaper.due(start + Duration::from_secs(1)), vec![2]);
        assert_eq!(shaper.next_due(), None);

        let mut lossy = Shaper::new(
            Impairment {
                loss_percent: 40,
                delay: Duration::ZERO,
            },
            42,
        );
        let dropped = (0..10_000)
            .filter(|&id| lossy.arrive(id, start) == Some(Verdict::Drop))
            .count();
        assert!(
            (3_700..4_300).contains(&dropped),
            "{dropped} of 10000 dropped"
        );
        let mut clean = Shaper::new(
            Impairment {
                loss_percent: 0,
                delay: Duration::ZERO,
            },
            1,
        );
        assert_eq!(clean.arrive(1, start), Some(Verdict::Accept));
    }
}
