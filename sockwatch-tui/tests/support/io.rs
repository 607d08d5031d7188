//! Moving exact byte counts through each send and receive syscall, via libc, so the syscall
//! under test is never in doubt.

use std::os::fd::RawFd;

/// A syscall that sends bytes on a connected socket.
#[derive(Clone, Copy, Debug)]
pub enum Sender {
    Write,
    Writev,
    Send,
    Sendto,
    Sendmsg,
    Sendmmsg,
    Sendfile,
}

/// A syscall that receives bytes on a connected socket.
#[derive(Clone, Copy, Debug)]
pub enum Receiver {
    Read,
    Readv,
    Recv,
    Recvfrom,
    Recvmsg,
    Recvmmsg,
}

fn check(n: isize, what: impl std::fmt::Debug) -> usize {
    if n < 0 {
        let error = std::io::Error::last_os_error();
        let hint = if error.kind() == std::io::ErrorKind::WouldBlock {
            format!(" (no progress within {:?})", super::net::SOCKET_TIMEOUT)
        } else {
            String::new()
        };
        panic!("{what:?}: {error}{hint}");
    }
    n as usize
}

fn iovecs(buf: &mut [u8]) -> [libc::iovec; 2] {
    // Two halves: the vectored calls must count both.
    let (a, b) = buf.split_at_mut(buf.len() / 2);
    [
        libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        },
    ]
}

/// Sends exactly `len` bytes on `fd` with `how` (looping on short writes).
pub fn send_all(fd: RawFd, len: usize, how: Sender) {
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0x5au8; left];
        // SAFETY: every pointer below is into `buf` or a local, valid for the given lengths.
        let n = unsafe {
            match how {
                Sender::Write => libc::write(fd, buf.as_ptr().cast(), left),
                Sender::Writev => {
                    let iov = iovecs(&mut buf);
                    libc::writev(fd, iov.as_ptr(), 2)
                }
                Sender::Send => libc::send(fd, buf.as_ptr().cast(), left, libc::MSG_NOSIGNAL),
                Sender::Sendto => libc::sendto(
                    fd,
                    buf.as_ptr().cast(),
                    left,
                    libc::MSG_NOSIGNAL,
                    std::ptr::null(),
                    0,
                ),
                Sender::Sendmsg => {
                    let mut iov = iovecs(&mut buf);
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = iov.as_mut_ptr();
                    msg.msg_iovlen = 2;
                    libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
                }
                Sender::Sendmmsg => {
                    // Two messages; the kernel reports each one's bytes in msg_len.
                    let (a, b) = buf.split_at_mut(left / 2);
                    let mut iov = [
                        libc::iovec {
                            iov_base: a.as_mut_ptr().cast(),
                            iov_len: a.len(),
                        },
                        libc::iovec {
                            iov_base: b.as_mut_ptr().cast(),
                            iov_len: b.len(),
                        },
                    ];
                    let mut msgs: [libc::mmsghdr; 2] = std::mem::zeroed();
                    for (msg, iov) in msgs.iter_mut().zip(iov.iter_mut()) {
                        msg.msg_hdr.msg_iov = iov;
                        msg.msg_hdr.msg_iovlen = 1;
                    }
                    let sent = libc::sendmmsg(fd, msgs.as_mut_ptr(), 2, libc::MSG_NOSIGNAL);
                    assert!(sent >= 0, "sendmmsg: {}", std::io::Error::last_os_error());
                    msgs[..sent as usize]
                        .iter()
                        .map(|m| m.msg_len as isize)
                        .sum()
                }
                Sender::Sendfile => {
                    // From a file holding the bytes: the out fd is the socket.
                    let file = tempfile_with(left);
                    let n = libc::sendfile(fd, file, std::ptr::null_mut(), left);
                    libc::close(file);
                    n
                }
            }
        };
        left -= check(n, how);
    }
}

/// Receives exactly `len` bytes on `fd` with `how` (looping on short reads).
pub fn recv_exact(fd: RawFd, len: usize, how: Receiver) {
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0u8; left];
        // SAFETY: as in send_all.
        let n = unsafe {
            match how {
                Receiver::Read => libc::read(fd, buf.as_mut_ptr().cast(), left),
                Receiver::Readv => {
                    let iov = iovecs(&mut buf);
                    libc::readv(fd, iov.as_ptr(), 2)
                }
                Receiver::Recv => libc::recv(fd, buf.as_mut_ptr().cast(), left, 0),
                Receiver::Recvfrom => libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    left,
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                ),
                Receiver::Recvmsg => {
                    let mut iov = iovecs(&mut buf);
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = iov.as_mut_ptr();
                    msg.msg_iovlen = 2;
                    libc::recvmsg(fd, &mut msg, 0)
                }
                Receiver::Recvmmsg => {
                    let mut iov = [libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: left,
                    }];
                    let mut msgs: [libc::mmsghdr; 1] = std::mem::zeroed();
                    msgs[0].msg_hdr.msg_iov = iov.as_mut_ptr();
                    msgs[0].msg_hdr.msg_iovlen = 1;
                    let got = libc::recvmmsg(fd, msgs.as_mut_ptr(), 1, 0, std::ptr::null_mut());
                    assert!(got >= 0, "recvmmsg: {}", std::io::Error::last_os_error());
                    msgs[..got as usize]
                        .iter()
                        .map(|m| m.msg_len as isize)
                        .sum()
                }
            }
        };
        let n = check(n, how);
        assert!(n > 0, "{how:?}: peer closed with {left} bytes to go");
        left -= n;
    }
}

/// An unlinked temporary file holding `len` bytes, positioned at its start.
fn tempfile_with(len: usize) -> RawFd {
    let dir = c"/tmp";
    // SAFETY: O_TMPFILE creates an unnamed file; the buffer write and lseek use our own fd.
    unsafe {
        let fd = libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600);
        assert!(fd >= 0, "O_TMPFILE: {}", std::io::Error::last_os_error());
        let buf = vec![0x42u8; len];
        assert_eq!(libc::write(fd, buf.as_ptr().cast(), len), len as isize);
        libc::lseek(fd, 0, libc::SEEK_SET);
        fd
    }
}
