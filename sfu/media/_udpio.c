/* sendmmsg(2)/recvmmsg(2) for sfu.media.udpio: many datagrams per system call.
 *
 * recv_many(sock, max_count=64) -> [(bytes, (host, port)), ...]
 * send_srtp(sock, [(bytes, (host, port)[, session, owner]), ...]) -> (sent, rest)
 *   sends with sendmmsg; an item carrying a libsrtp session (an srtp_t address, not 0) is
 *   plain RTP that is SRTP-protected here, into a buffer of this module, just before the
 *   system call: no Python bytes object per protected copy. ``owner`` keeps the session
 *   alive. ``rest``: what a full send buffer left unsent, in order, protected ones as bytes.
 *   (udpio.send_many is send_srtp without the rest.)
 * set_srtp_protect(address): the srtp_protect function send_srtp calls (libsrtp 2's
 *   srtp_err_status_t srtp_protect(srtp_t, void *, int *), as pylibsrtp's build exports it).
 *
 * Same rules as udpio's pure-Python fallback (see udpio.py): MSG_DONTWAIT always; a send
 * stops at EAGAIN/ENOBUFS and skips a packet the kernel refuses; a received datagram longer
 * than MAX_DATAGRAM is dropped. The GIL is held throughout: the calls never block, and no
 * Python code runs while the borrowed buffers are in use (only exact types are read).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define SEND_CHUNK 1024 /* UIO_MAXIOV: the most messages one sendmmsg takes */
#define RECV_CHUNK 64
#define MAX_DATAGRAM 2048

typedef union {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
} address_t;

/* The arrays for one sendmmsg call: static rather than ~110 KB of stack. Safe because the
 * GIL is held from filling them to the system call and nothing in between runs Python code. */
static struct mmsghdr send_msgs[SEND_CHUNK];
static struct iovec send_iovs[SEND_CHUNK];
static address_t send_addrs[SEND_CHUNK];

static char recv_buffers[RECV_CHUNK][MAX_DATAGRAM];
static int recv_buffers_busy; /* set while recv_many reads them (a finalizer could re-enter) */

/* Errors about the socket itself: raised instead of skipping every packet. */
static int
socket_error(int err)
{
    return err == EBADF || err == ENOTSOCK;
}

static int
socket_fd(PyObject *sock)
{
    PyObject *value = PyObject_CallMethod(sock, "fileno", NULL);
    if (value == NULL)
        return -1;
    long fd = PyLong_AsLong(value);
    Py_DECREF(value);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT_MAX) { /* a closed socket.socket reports -1 */
        errno = EBADF;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return (int)fd;
}

/* Fill *out from a (host, port[, flowinfo, scope_id]) tuple. 1: done; 0: the host is not
 * an IP literal (skip the packet); -1: malformed, exception set. */
static int
parse_address(PyObject *address, address_t *out, socklen_t *length)
{
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port) tuple");
        return -1;
    }
    PyObject *host_obj = PyTuple_GET_ITEM(address, 0);
    PyObject *port_obj = PyTuple_GET_ITEM(address, 1);
    if (!PyUnicode_Check(host_obj) || !PyLong_Check(port_obj)) {
        PyErr_SetString(PyExc_TypeError, "address must be a (str, int) tuple");
        return -1;
    }
    long port = PyLong_AsLong(port_obj);
    if (port == -1 && PyErr_Occurred())
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(host_obj);
    if (host == NULL)
        return -1;
    memset(out, 0, sizeof(*out));
    if (strchr(host, ':') == NULL) {
        if (inet_pton(AF_INET, host, &out->v4.sin_addr) != 1)
            return 0;
        out->v4.sin_family = AF_INET;
        out->v4.sin_port = htons((uint16_t)port);
        *length = sizeof(out->v4);
        return 1;
    }
    if (inet_pton(AF_INET6, host, &out->v6.sin6_addr) != 1)
        return 0;
    out->v6.sin6_family = AF_INET6;
    out->v6.sin6_port = htons((uint16_t)port);
    if (PyTuple_GET_SIZE(address) >= 4) { /* (host, port, flowinfo, scope_id) as sendto takes it */
        PyObject *flowinfo = PyTuple_GET_ITEM(address, 2);
        PyObject *scope_id = PyTuple_GET_ITEM(address, 3);
        if (!PyLong_Check(flowinfo) || !PyLong_Check(scope_id)) {
            PyErr_SetString(PyExc_TypeError, "flowinfo and scope_id must be int");
            return -1;
        }
        unsigned long flow = PyLong_AsUnsignedLong(flowinfo);
        unsigned long scope = PyLong_AsUnsignedLong(scope_id);
        if (PyErr_Occurred())
            return -1;
        if (flow > 0xfffff || scope > UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "flowinfo must be 0-1048575, scope_id 32 bits");
            return -1;
        }
        out->v6.sin6_flowinfo = htonl((uint32_t)flow);
        out->v6.sin6_scope_id = (uint32_t)scope;
    }
    *length = sizeof(out->v6);
    return 1;
}

/* Errors a socket reports once, on the next call, after an ICMP message: read on. */
static int
reported_once(int err)
{
    return err == ECONNREFUSED || err == ECONNRESET || err == EHOSTUNREACH || err == EHOSTDOWN
        || err == ENETUNREACH || err == ENETDOWN || err == EMSGSIZE || err == EPROTO || err == ETIMEDOUT;
}

static PyObject *
address_tuple(const address_t *address)
{
    char host[INET6_ADDRSTRLEN];
    const void *raw;
    uint16_t port;
    if (address->sa.sa_family == AF_INET) {
        raw = &address->v4.sin_addr;
        port = ntohs(address->v4.sin_port);
    } else if (address->sa.sa_family == AF_INET6) {
        raw = &address->v6.sin6_addr;
        port = ntohs(address->v6.sin6_port);
    } else {
        PyErr_SetString(PyExc_OSError, "recv_many: not an IP socket");
        return NULL;
    }
    if (inet_ntop(address->sa.sa_family, raw, host, sizeof(host)) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(sH)", host, port);
}

/* Append the datagrams received in msgs[0:count] to result. 0 on success, -1 on error. */
static int
collect(PyObject *result, struct mmsghdr *msgs, address_t *addrs, char (*buffers)[MAX_DATAGRAM], int count)
{
    PyObject *address = NULL; /* reused while consecutive datagrams share a sender */
    const address_t *previous = NULL;
    socklen_t previous_length = 0;
    for (int k = 0; k < count; k++) {
        if (msgs[k].msg_hdr.msg_flags & MSG_TRUNC)
            continue; /* longer than MAX_DATAGRAM: never deliver part of it */
        socklen_t length = msgs[k].msg_hdr.msg_namelen;
        if (previous == NULL || length != previous_length || memcmp(previous, &addrs[k], length) != 0) {
            Py_XDECREF(address);
            address = address_tuple(&addrs[k]);
            if (address == NULL)
                return -1;
        }
        previous = &addrs[k];
        previous_length = length;
        PyObject *data = PyBytes_FromStringAndSize(buffers[k], msgs[k].msg_len);
        if (data == NULL)
            goto error;
        PyObject *item = PyTuple_Pack(2, data, address);
        Py_DECREF(data);
        if (item == NULL)
            goto error;
        int appended = PyList_Append(result, item);
        Py_DECREF(item);
        if (appended < 0)
            goto error;
    }
    Py_XDECREF(address);
    return 0;
error:
    Py_XDECREF(address);
    return -1;
}

static PyObject *
recv_many(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "recv_many(sock, max_count=64) takes 1 or 2 arguments");
        return NULL;
    }
    Py_ssize_t max_count = 64;
    if (nargs == 2) {
        max_count = PyLong_AsSsize_t(args[1]);
        if (max_count == -1 && PyErr_Occurred())
            return NULL;
    }
    int fd = socket_fd(args[0]);
    if (fd < 0)
        return NULL;
    PyObject *result = PyList_New(0);
    if (result == NULL)
        return NULL;
    char (*buffers)[MAX_DATAGRAM] = recv_buffers;
    if (recv_buffers_busy) {
        buffers = PyMem_Malloc(sizeof(recv_buffers));
        if (buffers == NULL) {
            Py_DECREF(result);
            return PyErr_NoMemory();
        }
    } else {
        recv_buffers_busy = 1;
    }
    struct mmsghdr msgs[RECV_CHUNK];
    struct iovec iovs[RECV_CHUNK];
    address_t addrs[RECV_CHUNK];
    while (PyList_GET_SIZE(result) < max_count) {
        Py_ssize_t left = max_count - PyList_GET_SIZE(result);
        int want = left < RECV_CHUNK ? (int)left : RECV_CHUNK;
        for (int k = 0; k < want; k++) {
            iovs[k].iov_base = buffers[k];
            iovs[k].iov_len = MAX_DATAGRAM;
            memset(&msgs[k], 0, sizeof(msgs[k]));
            msgs[k].msg_hdr.msg_name = &addrs[k];
            msgs[k].msg_hdr.msg_namelen = sizeof(addrs[k]);
            msgs[k].msg_hdr.msg_iov = &iovs[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(fd, msgs, (unsigned int)want, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR || reported_once(errno))
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            PyErr_SetFromErrno(PyExc_OSError);
            goto error;
        }
        if (collect(result, msgs, addrs, buffers, n) < 0)
            goto error;
        if (n < want)
            break; /* the queue is empty: spare the call that would say EAGAIN */
    }
    goto done;
error:
    Py_CLEAR(result);
done:
    if (buffers == recv_buffers)
        recv_buffers_busy = 0;
    else
        PyMem_Free(buffers);
    return result;
}

/* --- send_srtp: SRTP protection and sendmmsg in one call ------------------------------- */

#define SRTP_TRAILER 144 /* SRTP_MAX_TRAILER_LEN: room srtp_protect may append */

typedef int (*srtp_protect_fn)(void *session, void *rtp, int *length);
static srtp_protect_fn srtp_protect_ptr;

/* One protected copy per message of a chunk (GIL held from protection to the system call). */
static char protect_buffers[SEND_CHUNK][MAX_DATAGRAM + SRTP_TRAILER];
static PyObject *send_addresses[SEND_CHUNK]; /* borrowed from the items, for ``rest`` */

static PyObject *
set_srtp_protect(PyObject *module, PyObject *arg)
{
    void *address = PyLong_AsVoidPtr(arg);
    if (address == NULL && PyErr_Occurred())
        return NULL;
    srtp_protect_ptr = (srtp_protect_fn)address;
    Py_RETURN_NONE;
}

/* Fill message ``count`` from ``item``. 1: ready; 0: skip the item; -1: exception set. */
static int
prepare_message(PyObject *item, unsigned int count)
{
    Py_ssize_t size = PyTuple_Check(item) ? PyTuple_GET_SIZE(item) : 0;
    if ((size != 2 && size != 4) || !PyBytes_Check(PyTuple_GET_ITEM(item, 0))) {
        PyErr_SetString(PyExc_TypeError, "packets must be (bytes, address[, session, owner]) tuples");
        return -1;
    }
    socklen_t length;
    PyObject *address = PyTuple_GET_ITEM(item, 1);
    int parsed = parse_address(address, &send_addrs[count], &length);
    if (parsed <= 0)
        return parsed;
    PyObject *data = PyTuple_GET_ITEM(item, 0);
    char *base = PyBytes_AS_STRING(data);
    Py_ssize_t data_length = PyBytes_GET_SIZE(data);
    void *session = NULL;
    if (size == 4) {
        session = PyLong_AsVoidPtr(PyTuple_GET_ITEM(item, 2));
        if (session == NULL && PyErr_Occurred())
            return -1;
    }
    if (session != NULL) {
        if (srtp_protect_ptr == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "send_srtp: set_srtp_protect was never called");
            return -1;
        }
        if (data_length > MAX_DATAGRAM)
            return 0; /* larger than any media packet: drop it */
        int protected_length = (int)data_length;
        memcpy(protect_buffers[count], base, (size_t)data_length);
        if (srtp_protect_ptr(session, protect_buffers[count], &protected_length) != 0)
            return 0; /* e.g. a sequence number libsrtp has protected before: drop it */
        base = protect_buffers[count];
        data_length = protected_length;
    }
    send_iovs[count].iov_base = base;
    send_iovs[count].iov_len = (size_t)data_length;
    memset(&send_msgs[count], 0, sizeof(send_msgs[count]));
    send_msgs[count].msg_hdr.msg_name = &send_addrs[count];
    send_msgs[count].msg_hdr.msg_namelen = length;
    send_msgs[count].msg_hdr.msg_iov = &send_iovs[count];
    send_msgs[count].msg_hdr.msg_iovlen = 1;
    send_addresses[count] = address;
    return 1;
}

/* What a full send buffer left: messages [from, count) as (bytes, address), then items[next:]. */
static PyObject *
unsent(unsigned int from, unsigned int count, PyObject **items, Py_ssize_t next, Py_ssize_t total)
{
    PyObject *rest = PyList_New(0);
    if (rest == NULL)
        return NULL;
    for (unsigned int k = from; k < count; k++) {
        PyObject *data = PyBytes_FromStringAndSize(send_iovs[k].iov_base, (Py_ssize_t)send_iovs[k].iov_len);
        PyObject *entry = data == NULL ? NULL : PyTuple_Pack(2, data, send_addresses[k]);
        Py_XDECREF(data);
        if (entry == NULL || PyList_Append(rest, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(rest);
            return NULL;
        }
        Py_DECREF(entry);
    }
    for (Py_ssize_t j = next; j < total; j++) {
        if (PyList_Append(rest, items[j]) < 0) {
            Py_DECREF(rest);
            return NULL;
        }
    }
    return rest;
}

static PyObject *
send_srtp(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_srtp(sock, packets) takes 2 arguments");
        return NULL;
    }
    int fd = socket_fd(args[0]);
    if (fd < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(args[1], "packets must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t total = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *rest = NULL;
    Py_ssize_t sent = 0;
    Py_ssize_t i = 0;
    while (i < total && rest == NULL) {
        unsigned int count = 0;
        for (; i < total && count < SEND_CHUNK; i++) {
            int ready = prepare_message(items[i], count);
            if (ready < 0)
                goto error;
            count += (unsigned int)ready;
        }
        unsigned int done = 0;
        while (done < count) {
            int n = sendmmsg(fd, send_msgs + done, count - done, MSG_DONTWAIT);
            if (n > 0) {
                done += (unsigned int)n;
                sent += n;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
                rest = unsent(done, count, items, i, total);
                if (rest == NULL)
                    goto error;
                break;
            } else if (n < 0 && socket_error(errno)) {
                PyErr_SetFromErrno(PyExc_OSError);
                goto error;
            } else {
                done++; /* sendmmsg stops at the first message the kernel refuses: skip it */
            }
        }
    }
    Py_DECREF(seq);
    if (rest == NULL && (rest = PyList_New(0)) == NULL)
        return NULL;
    return Py_BuildValue("(nN)", sent, rest);
error:
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"send_srtp", (PyCFunction)(void (*)(void))send_srtp, METH_FASTCALL,
     "send_srtp(sock, packets) -> (sent, rest)\n\nSend every (data, address[, session, owner]) with "
     "sendmmsg, SRTP-protecting those with a session first; stop at EAGAIN/ENOBUFS, skip a packet "
     "the kernel refuses; rest: what a full send buffer left."},
    {"set_srtp_protect", (PyCFunction)set_srtp_protect, METH_O,
     "set_srtp_protect(address)\n\nThe srtp_protect function (its address) send_srtp calls."},
    {"recv_many", (PyCFunction)(void (*)(void))recv_many, METH_FASTCALL,
     "recv_many(sock, max_count=64) -> list\n\nRead up to max_count queued datagrams with "
     "recvmmsg (MSG_DONTWAIT) as (data, (host, port)); [] if none."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_udpio", "sendmmsg/recvmmsg for sfu.media.udpio.", -1, methods,
};

PyMODINIT_FUNC
PyInit__udpio(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_DATAGRAM", MAX_DATAGRAM) < 0)
        Py_CLEAR(m);
    return m;
}
