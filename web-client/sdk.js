/**
 * JS client of this SFU, shaped like `twilio-video` 2.x so that moving an app over is mostly a
 * change of import. An ES module with no dependencies and no build step:
 *
 *   import * as Video from 'http://127.0.0.1:8080/sdk.js';
 *   const room = await Video.connect(token, { name: 'standup', audio: true, video: true });
 *   room.on('participantConnected', participant => ...);
 *   room.on('trackSubscribed', (track, publication, participant) => el.appendChild(track.attach()));
 *   room.disconnect();
 *
 * It speaks the websocket protocol documented at the top of signaling/protocol.py and mirrors
 * signaling/client.py: the server always offers; the client answers each offer, trickles its
 * ICE candidates, and derives every event from participant revisions and the `subscribed` map.
 * The signaling URL defaults to `/signaling` on the server this module was loaded from
 * (option `signalingUrl` overrides it).
 */

export const version = '0.1.0';

const PROTOCOL_VERSION = 1;
const PUBLISH_TIMEOUT_MS = 30000;
const CONNECT_TIMEOUT_MS = 30000;
const RECONNECT_ATTEMPTS = 8;
// Twilio error codes a publish refusal carries (53125 kind, 53203 too many, 533xx track).
const PUBLICATION_ERRORS = new Set([53125, 53203, 53204]);

/** An error with Twilio's code and message (`error.code`, `error.message`). */
export class TwilioError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'TwilioError';
    this.code = code;
  }

  toString() {
    return `${this.name} ${this.code}: ${this.message}`;
  }
}

/** A small EventEmitter (on / once / off / emit), as twilio-video's objects have. */
class EventEmitter {
  constructor() {
    Object.defineProperty(this, '_listeners', { value: new Map() });
  }

  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, []);
    this._listeners.get(event).push(listener);
    return this;
  }

  addListener(event, listener) {
    return this.on(event, listener);
  }

  once(event, listener) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      listener.apply(this, args);
    };
    wrapper.listener = listener;
    return this.on(event, wrapper);
  }

  off(event, listener) {
    const list = this._listeners.get(event);
    if (list) {
      const index = list.findIndex((l) => l === listener || l.listener === listener);
      if (index >= 0) list.splice(index, 1);
    }
    return this;
  }

  removeListener(event, listener) {
    return this.off(event, listener);
  }

  removeAllListeners(event) {
    if (event === undefined) this._listeners.clear();
    else this._listeners.delete(event);
    return this;
  }

  listenerCount(event) {
    return (this._listeners.get(event) || []).length;
  }

  emit(event, ...args) {
    const list = this._listeners.get(event);
    if (!list || list.length === 0) return false;
    for (const listener of [...list]) {
      try {
        listener.apply(this, args);
      } catch (error) {
        // An application's listener must not break the client's state machine.
        (globalThis.reportError || console.error)(error);
      }
    }
    return true;
  }
}

function uuid() {
  const b = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function defaultSignalingUrl() {
  const url = new URL('/signaling', import.meta.url);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

// --- attaching media to elements ------------------------------------------------------

function resolveElement(element) {
  if (typeof element === 'string') {
    const found = document.querySelector(element);
    if (!found) throw new TypeError(`No element matches ${element}`);
    return found;
  }
  return element;
}

/** attach() / detach() shared by local and remote audio and video tracks. */
const MediaAttachment = {
  attach(element) {
    const el = element === undefined ? document.createElement(this.kind) : resolveElement(element);
    el.autoplay = true;
    if (this.kind === 'video') {
      el.playsInline = true;
      el.muted = true; // a video element carries no audio here; muted keeps autoplay allowed
    }
    if (!this._stream) this._stream = new MediaStream([this.mediaStreamTrack]);
    if (el.srcObject !== this._stream) el.srcObject = this._stream;
    const played = el.play && el.play();
    if (played && played.catch) played.catch(() => {}); // autoplay refusals surface on the element
    this._attachments.add(el);
    return el;
  },

  detach(element) {
    const detachOne = (el) => {
      if (el.srcObject === this._stream) el.srcObject = null;
      this._attachments.delete(el);
      return el;
    };
    if (element !== undefined) return detachOne(resolveElement(element));
    return [...this._attachments].map(detachOne);
  },
};

// --- local tracks ---------------------------------------------------------------------

class LocalTrack extends EventEmitter {
  constructor(kind, id, name) {
    super();
    this.kind = kind;
    this.id = id;
    this.name = name || id;
    this.isEnabled = true;
    this._participant = null;
  }

  /** Events: `enabled`, `disabled` (this track). Muting is `disable()`. */
  enable(enabled = true) {
    enabled = Boolean(enabled);
    if (this.isEnabled !== enabled) {
      this.isEnabled = enabled;
      this._applyEnabled();
      this.emit(enabled ? 'enabled' : 'disabled', this);
      if (this._participant) this._participant._sendTracks();
    }
    return this;
  }

  disable() {
    return this.enable(false);
  }

  _applyEnabled() {}

  _describe() {
    return { id: this.id, kind: this.kind, name: this.name, enabled: this.isEnabled };
  }
}

class LocalMediaTrack extends LocalTrack {
  constructor(mediaStreamTrack, options = {}) {
    if (!(mediaStreamTrack instanceof MediaStreamTrack)) throw new TypeError('a MediaStreamTrack is required');
    super(mediaStreamTrack.kind, options.id || mediaStreamTrack.id, options.name);
    this.mediaStreamTrack = mediaStreamTrack;
    this.isStopped = mediaStreamTrack.readyState === 'ended';
    this._stream = null;
    this._attachments = new Set();
    mediaStreamTrack.addEventListener('ended', () => this._ended());
  }

  get isStarted() {
    return !this.isStopped;
  }

  _applyEnabled() {
    this.mediaStreamTrack.enabled = this.isEnabled; // black frames / silence while disabled
  }

  /** Stop capturing. Events: `stopped`. */
  stop() {
    this.mediaStreamTrack.stop();
    this._ended();
    return this;
  }

  _ended() {
    if (!this.isStopped) {
      this.isStopped = true;
      this.emit('stopped', this);
    }
  }
}
Object.assign(LocalMediaTrack.prototype, MediaAttachment);

export class LocalAudioTrack extends LocalMediaTrack {}
export class LocalVideoTrack extends LocalMediaTrack {}

/** A data track: `send()` queues (up to 1024 messages) until its channel opens. */
export class LocalDataTrack extends LocalTrack {
  constructor(options = {}) {
    const id = uuid();
    super('data', id, options.name);
    this.ordered = options.ordered !== undefined ? Boolean(options.ordered) : true;
    this.maxPacketLifeTime = options.maxPacketLifeTime ?? null;
    this.maxRetransmits = options.maxRetransmits ?? null;
    this.reliable = this.ordered && this.maxPacketLifeTime === null && this.maxRetransmits === null;
    this._channel = null;
    this._pending = [];
  }

  send(data) {
    const channel = this._channel;
    if (channel && channel.readyState === 'open') {
      channel.send(data);
    } else {
      if (this._pending.length >= 1024) this._pending.shift();
      this._pending.push(data);
    }
  }

  _bind(channel) {
    this._channel = channel;
    channel.binaryType = 'arraybuffer';
    const flush = () => {
      while (this._pending.length && channel.readyState === 'open') channel.send(this._pending.shift());
    };
    if (channel.readyState === 'open') flush();
    else channel.addEventListener('open', flush, { once: true });
  }

  _unbind() {
    if (this._channel) this._channel.close();
    this._channel = null;
  }
}

function wrapTrack(track, options) {
  if (track instanceof LocalTrack) return track;
  if (typeof MediaStreamTrack !== 'undefined' && track instanceof MediaStreamTrack) {
    return track.kind === 'audio' ? new LocalAudioTrack(track, options) : new LocalVideoTrack(track, options);
  }
  throw new TypeError('Expected a LocalAudioTrack, LocalVideoTrack, LocalDataTrack or MediaStreamTrack');
}

/** Like twilio-video's: `createLocalTracks({audio, video})`, each true, false or constraints
 * (with an optional `name`). Rejects with the browser's DOMException (NotAllowedError...). */
export async function createLocalTracks(options = {}) {
  const audio = options.audio === undefined ? true : options.audio;
  const video = options.video === undefined ? true : options.video;
  if (!audio && !video) return [];
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new DOMException('Media capture needs a secure context (https or localhost)', 'NotSupportedError');
  }
  const strip = (c) => {
    if (!c) return false;
    const { name, ...rest } = c === true ? {} : c;
    return Object.keys(rest).length ? rest : true;
  };
  const stream = await navigator.mediaDevices.getUserMedia({ audio: strip(audio), video: strip(video) });
  return stream.getTracks().map((t) => {
    const option = t.kind === 'audio' ? audio : video;
    const name = typeof option === 'object' && option.name ? option.name : undefined;
    return t.kind === 'audio' ? new LocalAudioTrack(t, { name }) : new LocalVideoTrack(t, { name });
  });
}

/** `createLocalAudioTrack({name, ...constraints})`, as in twilio-video. */
export async function createLocalAudioTrack(options = {}) {
  const [track] = await createLocalTracks({ audio: Object.keys(options).length ? options : true, video: false });
  return track;
}

/** `createLocalVideoTrack({name, ...constraints})`, as in twilio-video. */
export async function createLocalVideoTrack(options = {}) {
  const [track] = await createLocalTracks({ audio: false, video: Object.keys(options).length ? options : true });
  return track;
}

// --- remote tracks --------------------------------------------------------------------

class RemoteTrack extends EventEmitter {
  constructor(sid, kind) {
    super();
    this.sid = sid;
    this.kind = kind;
    this.name = sid;
    this.isEnabled = true;
    this.isSubscribed = true;
  }

  _setEnabled(enabled, emit) {
    if (this.isEnabled === enabled) return;
    this.isEnabled = enabled;
    if (emit) this.emit(enabled ? 'enabled' : 'disabled', this);
  }
}

class RemoteMediaTrack extends RemoteTrack {
  constructor(sid, kind, transceiver) {
    super(sid, kind);
    this._transceiver = transceiver;
    this.mediaStreamTrack = transceiver.receiver.track;
    this._stream = null;
    this._attachments = new Set();
  }

  get isStarted() {
    return !this.mediaStreamTrack.muted;
  }

  /** The browser's RTCStatsReport for this track's receiver. */
  getStats() {
    return this._transceiver.receiver.getStats();
  }
}
Object.assign(RemoteMediaTrack.prototype, MediaAttachment);

export class RemoteAudioTrack extends RemoteMediaTrack {}
export class RemoteVideoTrack extends RemoteMediaTrack {}

/** Events: `message` (data, this track). */
export class RemoteDataTrack extends RemoteTrack {
  constructor(sid, channel) {
    super(sid, 'data');
    this._channel = channel;
    this._relay = null;
    this.ordered = channel.ordered;
    this.maxPacketLifeTime = channel.maxPacketLifeTime;
    this.maxRetransmits = channel.maxRetransmits;
    this.reliable = this.ordered && this.maxPacketLifeTime === null && this.maxRetransmits === null;
    channel.binaryType = 'arraybuffer';
    channel.addEventListener('message', (event) => {
      this.emit('message', event.data, this);
      if (this._relay) this._relay(event.data);
    });
  }
}

// --- publications ---------------------------------------------------------------------

export class LocalTrackPublication {
  constructor(track, sid, participant) {
    this.track = track;
    this.trackSid = sid;
    this.trackName = track.name;
    this.kind = track.kind;
    this._participant = participant;
  }

  get isTrackEnabled() {
    return this.track.isEnabled;
  }

  unpublish() {
    this._participant.unpublishTrack(this.track);
    return this;
  }
}

/** Events: `subscribed` (track), `unsubscribed` (track), `subscriptionFailed` (error),
 * `trackEnabled`, `trackDisabled`. */
export class RemoteTrackPublication extends EventEmitter {
  constructor(sid, name, kind, enabled) {
    super();
    this.trackSid = sid;
    this.trackName = name;
    this.kind = kind;
    this.isTrackEnabled = enabled;
    this.track = null;
  }

  get isSubscribed() {
    return this.track !== null;
  }
}

// --- participants ---------------------------------------------------------------------

class Participant extends EventEmitter {
  constructor(sid, identity) {
    super();
    this.sid = sid;
    this.identity = identity;
    this.state = 'connected';
    this.networkQualityLevel = null; // 0-5 with connect({networkQuality}): see applySpeakersAndQuality
    this.networkQualityStats = null;
    this.isSpeaking = false; // (our extension) with connect({dominantSpeaker: true})
    this.tracks = new Map(); // track SID -> publication
    this.audioTracks = new Map();
    this.videoTracks = new Map();
    this.dataTracks = new Map();
  }

  _byKind(kind) {
    return { audio: this.audioTracks, video: this.videoTracks, data: this.dataTracks }[kind];
  }

  _addPublication(publication) {
    this.tracks.set(publication.trackSid, publication);
    this._byKind(publication.kind)?.set(publication.trackSid, publication);
  }

  _removePublication(publication) {
    this.tracks.delete(publication.trackSid);
    this._byKind(publication.kind)?.delete(publication.trackSid);
  }
}

/** Events: `trackPublished` (publication), `trackUnpublished` (publication), `trackSubscribed`
 * (track, publication), `trackUnsubscribed` (track, publication), `trackSubscriptionFailed`
 * (error, publication: this browser could not take the track, e.g. 53404 no supported codec,
 * and it stays unsubscribed), `trackEnabled` / `trackDisabled`
 * (track, or the publication when not subscribed; publication), `trackMessage` (data, track),
 * `reconnecting`, `reconnected`, `disconnected`. */
export class RemoteParticipant extends Participant {
  constructor(sid, identity) {
    super(sid, identity);
    this.revision = 0;
  }
}

/** Events: `trackPublished` (LocalTrackPublication), `trackPublicationFailed` (error, track: the
 * server refused it, or the room could not carry it, e.g. 53404 when the room's codec is not
 * one this browser can send; a pending publishTrack() rejects with the same error). */
export class LocalParticipant extends Participant {
  constructor(room, sid, identity) {
    super(sid, identity);
    this._room = room;
    this._local = new Map(); // client id -> LocalTrack, in publishing order
    this._waiting = new Map(); // client id -> {resolve, reject, timer}
  }

  _add(track) {
    track._participant = this;
    this._local.set(track.id, track);
  }

  /** Publish a LocalTrack (or a MediaStreamTrack); resolves with its LocalTrackPublication
   * once the server confirms it, rejects with a TwilioError if the server refuses it. */
  publishTrack(trackOrMediaStreamTrack, options) {
    let track;
    try {
      track = wrapTrack(trackOrMediaStreamTrack, options);
    } catch (error) {
      return Promise.reject(error);
    }
    for (const publication of this.tracks.values()) {
      if (publication.track === track) return Promise.resolve(publication);
    }
    if (this._room.state === 'disconnected') {
      return Promise.reject(new TwilioError(53204, 'Participant is not connected'));
    }
    const waiting = this._waiting.get(track.id);
    if (waiting) return waiting.promise;
    const entry = {};
    entry.promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    entry.timer = setTimeout(() => {
      this._fail(track, new TwilioError(53000, `Track ${track.name} was not published in time`));
    }, PUBLISH_TIMEOUT_MS);
    this._waiting.set(track.id, entry);
    this._add(track);
    this._sendTracks();
    if (track instanceof LocalDataTrack) this._room._openDataChannel(track);
    return entry.promise;
  }

  publishTracks(tracks) {
    return Promise.all(tracks.map((t) => this.publishTrack(t)));
  }

  /** Stop publishing a track; returns its publication (or null if it was not published). */
  unpublishTrack(trackOrMediaStreamTrack) {
    const track = [...this._local.values()].find(
      (t) => t === trackOrMediaStreamTrack || t.mediaStreamTrack === trackOrMediaStreamTrack,
    );
    if (!track) return null;
    this._local.delete(track.id);
    track._participant = null;
    const waiting = this._waiting.get(track.id);
    if (waiting) this._settle(track.id, null, new TwilioError(53000, `Track ${track.name} was unpublished`));
    this._sendTracks();
    if (track instanceof LocalDataTrack) track._unbind();
    const pc = this._room._pc;
    if (track instanceof LocalMediaTrack && pc.signalingState !== 'closed') {
      for (const transceiver of pc.getTransceivers()) {
        if (transceiver.sender.track === track.mediaStreamTrack) transceiver.sender.replaceTrack(null).catch(() => {});
      }
    }
    const publication = [...this.tracks.values()].find((p) => p.track === track) || null;
    if (publication) this._removePublication(publication);
    track._ready = false;
    track.sid = undefined;
    return publication;
  }

  unpublishTracks(tracks) {
    return tracks.map((t) => this.unpublishTrack(t)).filter(Boolean);
  }

  _sendTracks() {
    this._room._send({
      type: 'update',
      participant: { tracks: [...this._local.values()].map((t) => t._describe()) },
    });
  }

  _published(track) {
    const publication = new LocalTrackPublication(track, track.sid, this);
    this._addPublication(publication);
    this._settle(track.id, publication, null);
    this.emit('trackPublished', publication);
  }

  _fail(track, error) {
    if (this._local.get(track.id) === track) {
      this._local.delete(track.id);
      track._participant = null;
      if (track instanceof LocalDataTrack) track._unbind();
    }
    const publication = [...this.tracks.values()].find((p) => p.track === track);
    if (publication) this._removePublication(publication);
    track._ready = false;
    this._settle(track.id, null, error);
    this.emit('trackPublicationFailed', error, track);
  }

  _settle(id, publication, error) {
    const entry = this._waiting.get(id);
    if (!entry) return;
    this._waiting.delete(id);
    clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve(publication);
  }
}

// --- the room -------------------------------------------------------------------------

function openSocket(url) {
  return new Promise((resolve, reject) => {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      reject(new TwilioError(53000, `Invalid signaling URL: ${error.message}`));
      return;
    }
    const fail = () => {
      ws.onopen = ws.onclose = ws.onerror = null;
      reject(new TwilioError(53000, 'Unable to reach the signaling server'));
    };
    ws.onopen = () => {
      ws.onopen = ws.onclose = ws.onerror = null;
      resolve(ws);
    };
    ws.onerror = fail;
    ws.onclose = fail;
  });
}

/** Events: `participantConnected`, `participantDisconnected`, `participantReconnecting`,
 * `participantReconnected` (participant); `trackPublished` / `trackUnpublished` (publication,
 * participant); `trackSubscribed` / `trackUnsubscribed` (track, publication, participant);
 * `trackEnabled` / `trackDisabled` (track or publication, participant, publication);
 * `trackMessage` (data, track, participant); `trackSubscriptionFailed` (error, publication,
 * participant); `reconnecting` (error), `reconnected`; `error` (a TwilioError the server or
 * this client reported during the call; the call goes on); `serverDraining` (seconds: the
 * server is shutting down or restarting and the call ends within that many seconds);
 * `disconnected` (room, error: a TwilioError when the server or the network ended it: 53118
 * the room ended, 53001 the server shut down or could not be reached again, 53002 the server
 * no longer knew this session, 53205 the same identity joined elsewhere). */
export class Room extends EventEmitter {
  constructor(token, options, tracks, createdTracks) {
    super();
    this.sid = '';
    this.name = '';
    this.state = 'connecting';
    this.localParticipant = null;
    this.participants = new Map();
    this.dominantSpeaker = null; // with connect({dominantSpeaker: true}): see applySpeakersAndQuality
    this._token = token;
    this._url = options.signalingUrl || defaultSignalingUrl();
    this._initialTracks = tracks;
    this._createdTracks = createdTracks;
    this._session = '';
    this._ws = null;
    this._queue = Promise.resolve();
    this._connected = false;
    this._connectWaiter = null;
    this._closing = false;
    this._subscribed = new Map();
    this._subscriptionFailures = new Map(); // track SID -> {error, reported}
    this._announced = new Set();
    this._remoteTracks = new Map();
    this._midRole = new Map();
    this._dataQueue = [];
    this._negotiatedOnce = false;
    this._answerSent = false;
    this._candidates = [];
    this._heartbeat = null;
    // Twilio: `iceServers` given to connect() replace the server's (its Network Traversal
    // Service); otherwise `connected` brings them (_useServerIceServers), before any offer.
    this._iceServersGiven = Array.isArray(options.iceServers);
    this._pc = new RTCPeerConnection({
      bundlePolicy: options.bundlePolicy || 'max-bundle',
      iceServers: this._iceServersGiven ? options.iceServers : [],
      ...(options.iceTransportPolicy ? { iceTransportPolicy: options.iceTransportPolicy } : {}),
    });
    this._pc.addEventListener('icecandidate', (event) => this._onIceCandidate(event.candidate));
    this._pc.addEventListener('datachannel', (event) => this._onDataChannel(event.channel));
    this._onPageHide = () => this.disconnect();
    if (typeof window !== 'undefined') window.addEventListener('pagehide', this._onPageHide);
  }

  get isRecording() {
    return false;
  }

  // --- wire -------------------------------------------------------------------------

  async _open(name, options) {
    const connected = new Promise((resolve, reject) => {
      this._connectWaiter = { resolve, reject };
    });
    const timer = setTimeout(
      () => this._rejectConnect(new TwilioError(53000, 'Timed out connecting to the room')),
      options.timeout || CONNECT_TIMEOUT_MS,
    );
    try {
      const ws = await openSocket(this._url);
      this._bindSocket(ws);
      const message = {
        type: 'connect',
        token: this._token,
        participant: { tracks: this._initialTracks.map((t) => t._describe()) },
      };
      if (name) message.name = name;
      if (options.subscribeRules) message.subscribe = { rules: options.subscribeRules };
      Object.assign(message, speakerAndQualityOptions(options));
      this._send(message);
      await connected;
    } finally {
      clearTimeout(timer);
    }
  }

  _rejectConnect(error) {
    if (this._connectWaiter) {
      this._connectWaiter.reject(error);
      this._connectWaiter = null;
    }
  }

  _bindSocket(ws) {
    this._ws = ws;
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this._queue = this._queue.then(() => this._dispatch(message)).catch((error) => console.error('sdk:', error));
    };
    ws.onclose = () => {
      this._queue = this._queue.then(() => this._socketClosed(ws));
    };
    ws.onerror = () => {};
  }

  _send(message) {
    const ws = this._ws;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ ...message, version: PROTOCOL_VERSION }));
  }

  async _dispatch(message) {
    if (this.state === 'disconnected') return;
    switch (message.type) {
      case 'connected':
      case 'synced':
        this._onConnected(message);
        break;
      case 'update':
        await this._onUpdate(message);
        break;
      case 'error': {
        const error = new TwilioError(Number(message.code) || 0, String(message.message || ''));
        if (!this._connected) {
          this._rejectConnect(error);
        } else if (error.code === 53002) {
          this._close(error);
        } else {
          if ((message.request === 'update' || message.request === 'connect') && isPublicationError(error.code)) {
            // Tracks the server accepted have their SIDs by now (`published` comes first).
            for (const track of [...this.localParticipant._local.values()]) {
              if (!track.sid) this.localParticipant._fail(track, error);
            }
          }
          this.emit('error', error);
        }
        break;
      }
      case 'draining': {
        // Not an error: the call goes on until the server ends it (disconnected 53001).
        const timeout = Number(message.timeout);
        this.emit('serverDraining', Number.isFinite(timeout) && timeout >= 0 ? timeout : null);
        break;
      }
      case 'disconnected': {
        const error = message.code ? new TwilioError(Number(message.code), String(message.message || '')) : null;
        if (!this._connected) this._rejectConnect(error || new TwilioError(53000, 'Disconnected while connecting'));
        this._close(error);
        break;
      }
      default:
        break; // heartbeat and anything newer
    }
  }

  // --- state ------------------------------------------------------------------------

  _onConnected(message) {
    const first = !this._connected;
    this._session = message.session;
    this.sid = message.room.sid;
    this.name = message.room.name;
    this.type = message.room.type;
    if (first) {
      this._useServerIceServers(message.ice_servers);
      const me = message.participant;
      this.localParticipant = new LocalParticipant(this, me.sid, me.identity);
      for (const track of this._initialTracks) {
        this.localParticipant._add(track);
        if (track instanceof LocalDataTrack) this._dataQueue.push(track);
      }
    } else {
      // Whoever left while our socket was down is missing from the list: they are gone.
      const listed = new Set((message.participants || []).map((p) => p.sid));
      for (const p of [...this.participants.values()]) {
        if (!listed.has(p.sid)) {
          this._applyParticipant({ sid: p.sid, identity: p.identity, state: 'disconnected', revision: p.revision + 1, tracks: [] });
        }
      }
    }
    this.subscribeRules = (message.subscribe || {}).rules || [];
    for (const p of message.participants || []) this._applyParticipant(p);
    this._applyPublished(message.published);
    this._applySubscribed(message.subscribed);
    // After connect() resolves, as Twilio's first media-signaling message comes: an app that
    // listens for dominantSpeakerChanged / networkQualityLevelChanged then hears the first values.
    if (first) setTimeout(() => this.state !== 'disconnected' && applySpeakersAndQuality(this, message), 0);
    else applySpeakersAndQuality(this, message);
    this.state = 'connected';
    this._startHeartbeat((message.options || {}).heartbeat_interval);
    if (first) {
      this._connected = true;
      if (this._connectWaiter) this._connectWaiter.resolve();
      this._connectWaiter = null;
    } else {
      this.emit('reconnected');
    }
  }

  /** The server's STUN / TURN list (`connected.ice_servers`), unless the app gave its own.
   * Nothing has gathered yet: the server's first offer comes after `connected`. */
  _useServerIceServers(iceServers) {
    if (this._iceServersGiven || !Array.isArray(iceServers) || !iceServers.length) return;
    try {
      this._pc.setConfiguration({ ...this._pc.getConfiguration(), iceServers });
    } catch (error) {
      console.warn('sdk: the server\'s ICE servers were refused:', error.message); // (never the credentials)
    }
  }

  async _onUpdate(message) {
    for (const p of message.participants || []) this._applyParticipant(p);
    if (message.published) this._applyPublished(message.published);
    if (message.subscribed) this._applySubscribed(message.subscribed);
    if (message.subscribe) this.subscribeRules = message.subscribe.rules;
    applySpeakersAndQuality(this, message);
    const pc = message.peer_connection;
    if (pc && pc.description && pc.description.type === 'offer') {
      await this._answer(pc.description, pc.sections || []);
    }
  }

  _applyParticipant(state) {
    const sid = state.sid;
    let p = this.participants.get(sid);
    const isNew = !p;
    if (!p) {
      if (state.state === 'disconnected') return;
      p = new RemoteParticipant(sid, state.identity);
    }
    if (state.revision <= p.revision) return;
    p.revision = state.revision;
    if (isNew) {
      this.participants.set(sid, p);
      this.emit('participantConnected', p);
    }
    if (state.state === 'disconnected') {
      for (const pub of [...p.tracks.values()]) this._unpublished(p, pub);
      this.participants.delete(sid);
      p.state = 'disconnected';
      p.emit('disconnected', p);
      this.emit('participantDisconnected', p);
      return;
    }
    if (state.state !== p.state) {
      const previous = p.state;
      p.state = state.state;
      if (p.state === 'reconnecting') {
        p.emit('reconnecting');
        this.emit('participantReconnecting', p);
      } else if (previous === 'reconnecting') {
        p.emit('reconnected');
        this.emit('participantReconnected', p);
      }
    }
    const seen = new Set();
    for (const t of state.tracks || []) {
      seen.add(t.sid);
      let pub = p.tracks.get(t.sid);
      if (!pub) {
        pub = new RemoteTrackPublication(t.sid, t.name, t.kind, t.enabled);
        p._addPublication(pub);
        p.emit('trackPublished', pub);
        this.emit('trackPublished', pub, p);
        this._maybeSubscribed(t.sid);
        this._maybeSubscriptionFailed(t.sid);
      } else if (pub.isTrackEnabled !== t.enabled) {
        pub.isTrackEnabled = t.enabled;
        if (pub.track) pub.track._setEnabled(t.enabled, true);
        const event = t.enabled ? 'trackEnabled' : 'trackDisabled';
        pub.emit(event);
        p.emit(event, pub.track || pub, pub);
        this.emit(event, pub.track || pub, p, pub);
      }
    }
    for (const gone of [...p.tracks.keys()].filter((s) => !seen.has(s))) this._unpublished(p, p.tracks.get(gone));
  }

  _unpublished(p, pub) {
    this._unsubscribe(pub.trackSid);
    p._removePublication(pub);
    p.emit('trackUnpublished', pub);
    this.emit('trackUnpublished', pub, p);
  }

  _applyPublished(published) {
    if (!published) return;
    const lp = this.localParticipant;
    for (const entry of published.tracks || []) {
      const track = lp._local.get(entry.id);
      if (!track) continue;
      track.sid = entry.sid;
      if (entry.state === 'failed') {
        // The room cannot carry it (e.g. 53404: no codec in common); it is no longer ours to send.
        lp._fail(track, twilioError(entry.error, 53300, `Track ${track.name} could not be published`));
      } else if (entry.state === 'ready' && !track._ready) {
        track._ready = true;
        lp._published(track);
      }
    }
  }

  _applySubscribed(subscribed) {
    if (!subscribed) return;
    const entries = subscribed.tracks || [];
    // An entry with `error` is a subscription this browser could not take: not subscribed.
    const current = new Map(entries.filter((t) => !t.error).map((t) => [t.sid, t]));
    const failed = new Map(entries.filter((t) => t.error).map((t) => [t.sid, t.error]));
    for (const sid of [...this._subscribed.keys()]) if (!current.has(sid)) this._unsubscribe(sid);
    for (const sid of [...this._subscriptionFailures.keys()]) if (!failed.has(sid)) this._subscriptionFailures.delete(sid);
    for (const [sid, error] of failed) {
      if (this._subscriptionFailures.has(sid)) continue; // reported once per failure
      this._subscriptionFailures.set(sid, { error: twilioError(error, 53400, 'Track subscription failed'), reported: false });
      this._maybeSubscriptionFailed(sid);
    }
    for (const [sid, entry] of current) {
      if (!this._subscribed.has(sid)) {
        this._subscribed.set(sid, entry);
        this._maybeSubscribed(sid);
      }
    }
  }

  _findPublication(sid) {
    for (const p of this.participants.values()) {
      const pub = p.tracks.get(sid);
      if (pub) return [p, pub];
    }
    return null;
  }

  /** Announce a subscription once the server lists it and its media has arrived. */
  _maybeSubscribed(sid) {
    if (this._announced.has(sid) || !this._subscribed.has(sid)) return;
    const track = this._remoteTracks.get(sid);
    const found = this._findPublication(sid);
    if (!track || !found) return;
    const [p, pub] = found;
    track.name = pub.trackName;
    track._setEnabled(pub.isTrackEnabled, false);
    track.isSubscribed = true;
    pub.track = track;
    this._announced.add(sid);
    if (track instanceof RemoteDataTrack) {
      track._relay = (data) => {
        p.emit('trackMessage', data, track);
        this.emit('trackMessage', data, track, p);
      };
    }
    pub.emit('subscribed', track);
    p.emit('trackSubscribed', track, pub);
    this.emit('trackSubscribed', track, pub, p);
  }

  /** Report a failed subscription once its publication is known. */
  _maybeSubscriptionFailed(sid) {
    const failure = this._subscriptionFailures.get(sid);
    if (!failure || failure.reported) return;
    const found = this._findPublication(sid);
    if (!found) return;
    failure.reported = true;
    const [p, pub] = found;
    pub.emit('subscriptionFailed', failure.error);
    p.emit('trackSubscriptionFailed', failure.error, pub);
    this.emit('trackSubscriptionFailed', failure.error, pub, p);
  }

  _unsubscribe(sid) {
    this._subscribed.delete(sid);
    const track = this._remoteTracks.get(sid);
    this._remoteTracks.delete(sid);
    if (!this._announced.has(sid)) return;
    this._announced.delete(sid);
    const found = this._findPublication(sid);
    if (found && track) {
      const [p, pub] = found;
      pub.track = null;
      track.isSubscribed = false;
      if (track instanceof RemoteDataTrack) track._relay = null;
      pub.emit('unsubscribed', track);
      p.emit('trackUnsubscribed', track, pub);
      this.emit('trackUnsubscribed', track, pub, p);
    }
  }

  // --- media ------------------------------------------------------------------------

  async _answer(description, sections) {
    const pc = this._pc;
    const revision = description.revision;
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp: description.sdp });
      const byMid = new Map(sections.map((s) => [s.mid, s]));
      for (const transceiver of pc.getTransceivers()) {
        if (transceiver.mid === null || transceiver.currentDirection === 'stopped') continue;
        const section = byMid.get(transceiver.mid);
        if (!section) {
          transceiver.direction = 'inactive';
        } else if (section.role === 'publish') {
          const track = this.localParticipant._local.get(section.id || '');
          transceiver.direction = 'sendonly';
          if (track instanceof LocalMediaTrack && transceiver.sender.track !== track.mediaStreamTrack) {
            await transceiver.sender.replaceTrack(track.mediaStreamTrack);
          }
        } else {
          transceiver.direction = 'recvonly';
          this._mediaSection(transceiver, section);
        }
      }
      await pc.setLocalDescription(await pc.createAnswer());
    } catch (error) {
      if (this.state === 'disconnected') return;
      console.warn('sdk: could not answer offer', revision, error);
      this.emit('error', new TwilioError(53402, `Unable to apply the offer: ${error.message}`));
      return;
    }
    this._send({
      type: 'update',
      peer_connection: { description: { type: 'answer', revision, sdp: pc.localDescription.sdp } },
    });
    if (!this._answerSent) {
      this._answerSent = true;
      this._flushCandidates();
    }
    if (!this._negotiatedOnce) {
      this._negotiatedOnce = true; // the SCTP transport exists now
      for (const track of this._dataQueue) this._openDataChannel(track);
      this._dataQueue = [];
    }
  }

  _mediaSection(transceiver, section) {
    const sid = section.track_sid;
    const role = `subscribe:${sid}`;
    if (this._midRole.get(transceiver.mid) === role) return;
    this._midRole.set(transceiver.mid, role);
    const Track = section.kind === 'audio' ? RemoteAudioTrack : RemoteVideoTrack;
    this._remoteTracks.set(sid, new Track(sid, section.kind, transceiver));
    this._maybeSubscribed(sid);
  }

  _onDataChannel(channel) {
    const sid = channel.label;
    if (!sid.startsWith('MT')) return; // subscribed data tracks are labelled with their SID
    this._remoteTracks.set(sid, new RemoteDataTrack(sid, channel));
    this._maybeSubscribed(sid);
  }

  _openDataChannel(track) {
    if (!this._negotiatedOnce) {
      if (!this._dataQueue.includes(track)) this._dataQueue.push(track);
      return;
    }
    if (this._pc.signalingState === 'closed') return;
    const init = { ordered: track.ordered };
    if (track.maxPacketLifeTime !== null) init.maxPacketLifeTime = track.maxPacketLifeTime;
    else if (track.maxRetransmits !== null) init.maxRetransmits = track.maxRetransmits;
    track._bind(this._pc.createDataChannel(track.id, init));
  }

  _onIceCandidate(candidate) {
    if (!candidate || !candidate.candidate) {
      this._iceComplete = true; // end of candidates: lets the server's ICE give up on failure
    } else {
      this._candidates.push({ candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex });
    }
    if (this._answerSent) this._flushCandidates();
  }

  _flushCandidates() {
    while (this._candidates.length) {
      const candidates = this._candidates.splice(0, 64);
      this._send({ type: 'update', peer_connection: { ice: { candidates } } });
    }
    if (this._iceComplete && !this._iceCompleteSent) {
      this._iceCompleteSent = true;
      this._send({ type: 'update', peer_connection: { ice: { candidates: [], complete: true } } });
    }
  }

  /** Twilio-shaped stats: one report with per-track summaries, plus `framesDecoded` for
   * remote video. */
  async getStats() {
    const report = {
      peerConnectionId: 'PC1',
      localAudioTrackStats: [],
      localVideoTrackStats: [],
      remoteAudioTrackStats: [],
      remoteVideoTrackStats: [],
    };
    if (this._pc.signalingState === 'closed') return [report];
    for (const transceiver of this._pc.getTransceivers()) {
      if (transceiver.currentDirection === 'sendonly' && transceiver.sender.track) {
        const track = [...(this.localParticipant?._local.values() || [])].find((t) => t.mediaStreamTrack === transceiver.sender.track);
        const stats = await transceiver.sender.getStats();
        for (const s of stats.values()) {
          if (s.type !== 'outbound-rtp') continue;
          const entry = { trackId: transceiver.sender.track.id, trackSid: track?.sid || null, ssrc: s.ssrc, timestamp: s.timestamp, packetsSent: s.packetsSent, bytesSent: s.bytesSent };
          if (s.kind === 'video') report.localVideoTrackStats.push({ ...entry, framesEncoded: s.framesEncoded, dimensions: { width: s.frameWidth ?? null, height: s.frameHeight ?? null } });
          else report.localAudioTrackStats.push(entry);
        }
      }
    }
    for (const [sid, track] of this._remoteTracks) {
      if (!(track instanceof RemoteMediaTrack)) continue;
      const stats = await track.getStats();
      for (const s of stats.values()) {
        if (s.type !== 'inbound-rtp') continue;
        const entry = { trackId: track.mediaStreamTrack.id, trackSid: sid, ssrc: s.ssrc, timestamp: s.timestamp, packetsReceived: s.packetsReceived, packetsLost: s.packetsLost, bytesReceived: s.bytesReceived };
        if (s.kind === 'video') report.remoteVideoTrackStats.push({ ...entry, framesDecoded: s.framesDecoded ?? 0, frameRate: s.framesPerSecond ?? null, dimensions: { width: s.frameWidth ?? null, height: s.frameHeight ?? null } });
        else report.remoteAudioTrackStats.push({ ...entry, audioLevel: s.audioLevel ?? null });
      }
    }
    return [report];
  }

  // --- leaving, reconnecting --------------------------------------------------------

  _startHeartbeat(seconds) {
    if (this._heartbeat) clearInterval(this._heartbeat);
    const interval = Math.max(1, Number(seconds) || 5) * 1000;
    this._heartbeat = setInterval(() => this._send({ type: 'heartbeat' }), interval);
  }

  /** Leave the room. Returns the room; `disconnected` is emitted with no error. */
  disconnect() {
    if (this.state === 'disconnected') return this;
    this._closing = true;
    this._send({ type: 'disconnect' });
    if (!this._connected) this._rejectConnect(new TwilioError(53000, 'Disconnected while connecting'));
    this._close(null);
    return this;
  }

  async _socketClosed(ws) {
    if (ws !== this._ws || this._closing || this.state === 'disconnected') return;
    if (!this._connected) {
      this._rejectConnect(new TwilioError(53000, 'Signaling connection closed before connecting'));
      this._close(null);
      return;
    }
    this.state = 'reconnecting';
    this.emit('reconnecting', new TwilioError(53001, 'Signaling connection disconnected'));
    for (let attempt = 0; attempt < RECONNECT_ATTEMPTS; attempt++) {
      await sleep(Math.min(100 * 2 ** attempt, 1000));
      if (this._closing || this.state === 'disconnected') return;
      let next;
      try {
        next = await openSocket(this._url);
      } catch {
        continue;
      }
      if (this._closing || this.state === 'disconnected') {
        next.close();
        return;
      }
      this._bindSocket(next);
      this._send({ type: 'sync', token: this._token, session: this._session });
      return; // `synced` emits `reconnected`; a refusal (53002) disconnects
    }
    this._close(new TwilioError(53001, 'Signaling connection lost'));
  }

  _close(error) {
    if (this.state === 'disconnected') return;
    this.state = 'disconnected';
    this._closing = true;
    if (this._heartbeat) clearInterval(this._heartbeat);
    if (typeof window !== 'undefined') window.removeEventListener('pagehide', this._onPageHide);
    for (const p of this.participants.values()) {
      for (const pub of p.tracks.values()) this._unsubscribe(pub.trackSid);
    }
    for (const p of this.participants.values()) p.state = 'disconnected';
    const lp = this.localParticipant;
    if (lp) {
      for (const track of lp._local.values()) {
        if (track instanceof LocalDataTrack) track._unbind();
        if (lp._waiting.has(track.id)) lp._settle(track.id, null, new TwilioError(53000, 'Room disconnected'));
        track._ready = false;
      }
      lp.state = 'disconnected';
    }
    if (this._ws) this._ws.close();
    this._pc.close();
    for (const track of this._createdTracks) track.stop();
    if (this._connected) this.emit('disconnected', this, error);
  }
}

/** A TwilioError from a protocol `{code, message}` object (defaults when a field is missing). */
// --- dominant speaker and network quality (issue 12) ----------------------------------
//
// connect(token, {dominantSpeaker: true}) keeps `room.dominantSpeaker` (a RemoteParticipant or
// null, as Twilio's) and emits `dominantSpeakerChanged` (participant or null) on the room.
// connect(token, {networkQuality: true | {local: 1-3, remote: 0-3}}) keeps each participant's
// `networkQualityLevel` (0-5, null until known) and `networkQualityStats` (Twilio's
// NetworkQualityStats shape at verbosity 2 and 3, else null) and emits
// `networkQualityLevelChanged` (level, stats) on the participant. Our extension: with
// dominantSpeaker, each participant's `isSpeaking` and its `isSpeakingChanged` (boolean) event,
// and the room's `speakingChanged` (participant, boolean), for a speaking indicator.

function speakerAndQualityOptions(options) {
  const out = {};
  if (options.dominantSpeaker) out.dominant_speaker = true;
  const quality = options.networkQuality;
  if (quality === true) {
    out.network_quality = { local: 1, remote: 0 };
  } else if (quality && typeof quality === 'object') {
    const verbosity = (value, fallback) => (Number.isInteger(value) && value >= 0 && value <= 3 ? value : fallback);
    out.network_quality = { local: Math.max(1, verbosity(quality.local, 1)), remote: verbosity(quality.remote, 0) };
  }
  return out;
}

function participantBySid(room, sid) {
  if (!sid || !room.localParticipant) return null;
  return sid === room.localParticipant.sid ? room.localParticipant : room.participants.get(sid) || null;
}

function applySpeakersAndQuality(room, message) {
  const speakers = message.dominant_speaker;
  if (speakers && typeof speakers === 'object') {
    const speaking = new Set(Array.isArray(speakers.speaking) ? speakers.speaking : []);
    for (const p of [room.localParticipant, ...room.participants.values()]) {
      if (!p || p.isSpeaking === speaking.has(p.sid)) continue;
      p.isSpeaking = speaking.has(p.sid);
      p.emit('isSpeakingChanged', p.isSpeaking);
      room.emit('speakingChanged', p, p.isSpeaking);
    }
    const found = participantBySid(room, speakers.sid);
    const dominant = found instanceof RemoteParticipant ? found : null; // (Twilio names remote ones only)
    if (dominant !== room.dominantSpeaker) {
      room.dominantSpeaker = dominant;
      room.emit('dominantSpeakerChanged', dominant);
    }
  }
  for (const entry of Array.isArray(message.network_quality) ? message.network_quality : []) {
    const p = participantBySid(room, entry && entry.sid);
    if (!p || !Number.isInteger(entry.level)) continue;
    p.networkQualityStats = entry.stats || null;
    if (entry.level !== p.networkQualityLevel) {
      p.networkQualityLevel = entry.level;
      p.emit('networkQualityLevelChanged', entry.level, p.networkQualityStats);
    }
  }
}

function twilioError(error, code, message) {
  const e = error && typeof error === 'object' ? error : {};
  return new TwilioError(Number(e.code) || code, String(e.message || message));
}

function isPublicationError(code) {
  return PUBLICATION_ERRORS.has(code) || (code >= 53300 && code < 53400);
}

/**
 * Join a room, like twilio-video's `connect(token, options)`. Options: `name` (the room),
 * `audio` / `video` (true, false or constraints; used when `tracks` is not given; default
 * true), `tracks` (LocalTracks or MediaStreamTracks to publish), `signalingUrl`,
 * `iceServers` (default: the STUN / TURN servers the server hands out, from its
 * `--ice-server` list; an array given here replaces them, as Twilio's replaces its Network
 * Traversal Service), `iceTransportPolicy` ('relay': relayed candidates only, through TURN),
 * `bundlePolicy` (default max-bundle), `dominantSpeaker` and `networkQuality` (Twilio's; see
 * "dominant speaker and network quality" above). Rejects with a
 * TwilioError carrying the server's code and message (20101 bad token, 53105 room full, ...)
 * or with the browser's DOMException when the camera or microphone is refused.
 */
export async function connect(token, options = {}) {
  let tracks = options.tracks;
  let created = [];
  if (!tracks) {
    tracks = await createLocalTracks({ audio: options.audio ?? true, video: options.video ?? true });
    created = tracks;
  }
  tracks = tracks.map((t) => wrapTrack(t));
  const room = new Room(token, options, tracks, created);
  try {
    await room._open(options.name, options);
  } catch (error) {
    room._close(null);
    throw error;
  }
  return room;
}

export function isSupported() {
  return typeof RTCPeerConnection !== 'undefined' && typeof WebSocket !== 'undefined';
}

export default {
  version,
  connect,
  createLocalTracks,
  createLocalAudioTrack,
  createLocalVideoTrack,
  isSupported: isSupported(),
  LocalAudioTrack,
  LocalVideoTrack,
  LocalDataTrack,
  TwilioError,
};
