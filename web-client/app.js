// The bundled page: join form with a camera preview, a grid of participants, controls and chat.
// It uses only the public API of sdk.js, the same module applications import.
import * as Video from './sdk.js';

const $ = (id) => document.getElementById(id);
const ui = {
  message: $('message'),
  messageText: $('message-text'),
  messageDismiss: $('message-dismiss'),
  notice: $('notice'),
  join: $('join'),
  joinForm: $('join-form'),
  joinButton: $('join-button'),
  roomInput: $('room-input'),
  identityInput: $('identity-input'),
  tokenInput: $('token-input'),
  joinMic: $('join-mic'),
  joinCam: $('join-cam'),
  devices: $('devices'),
  cameraSelect: $('camera-select'),
  micSelect: $('mic-select'),
  preview: $('preview'),
  previewOff: $('preview-off'),
  previewStatus: $('preview-status'),
  call: $('call'),
  callTitle: $('call-title'),
  roomName: $('room-name'),
  roomState: $('room-state'),
  tiles: $('tiles'),
  micButton: $('mic-button'),
  camButton: $('cam-button'),
  screenButton: $('screen-button'),
  chatButton: $('chat-button'),
  chatCount: $('chat-count'),
  leaveButton: $('leave-button'),
  controls: document.querySelector('.controls'),
  chat: $('chat'),
  chatLog: $('chat-log'),
  chatForm: $('chat-form'),
  chatInput: $('chat-input'),
  tileTemplate: $('tile-template'),
};

const state = {
  audio: null, // LocalAudioTrack named "microphone", kept across calls
  video: null, // LocalVideoTrack named "camera"
  mediaReady: null, // the promise of the first getUserMedia
  room: null,
  chat: null, // LocalDataTrack named "chat", one per call
  screen: null, // LocalVideoTrack named "screen" while sharing
  tiles: new Map(), // key -> tile element ("local", participant SID, or "<SID>/<track SID>")
  draining: false, // the server said it is shutting down: the call ends soon
  unread: 0, // chat messages that arrived while the chat was out of sight
  shown: new WeakSet(), // errors already explained by a more specific message
  codecFailures: new Map(), // track SID -> {identity, publication}: subscriptions without a codec in common
  iceTransportPolicy: null, // ?iceTransportPolicy=relay: TURN only (the ICE servers come from the server)
};

const MAX_CHAT_ENTRIES = 500;

class UiError extends Error {}

// --- messages -------------------------------------------------------------------------

/** The banner under the header: sticks to the top of the screen until dismissed or replaced.
 * `kind` is 'error' or 'warning' (the call goes on, but something needs attention). */
function showError(text, kind = 'error') {
  ui.messageText.textContent = text;
  ui.message.dataset.kind = kind;
  ui.message.hidden = false;
}

function clearError() {
  ui.messageText.textContent = '';
  ui.message.hidden = true;
}

function dismissError() {
  const hadFocus = ui.message.contains(document.activeElement);
  clearError();
  if (hadFocus) (state.room ? ui.micButton : ui.joinButton).focus();
}

let noticeTimer = null;
function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    ui.notice.hidden = true;
  }, 6000);
}

function unreachable() {
  return `Can't reach the server at ${location.host}. Check that it is running (sfu serve) and that this device can reach it, then try again.`;
}

function describeMediaError(error, what) {
  const name = error && error.name;
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
    return `${what} access was denied.`;
  }
  if (name === 'NotFoundError' || name === 'OverconstrainedError') return `No ${what.toLowerCase()} was found.`;
  if (name === 'NotReadableError' || name === 'AbortError') return `The ${what.toLowerCase()} is in use by another application.`;
  if (name === 'NotSupportedError' || name === 'TypeError') return `${what} access needs https (or localhost).`;
  return `The ${what.toLowerCase()} could not be started (${name || error}).`;
}

/** What a person should read when joining fails or the call ends with an error. */
function describeError(error, roomName) {
  if (error instanceof UiError) return error.message;
  const code = error && error.code;
  const detail = error && error.message ? `${error.message}` : 'unknown error';
  if (typeof code !== 'number') return `Could not join: ${detail}.`;
  if (code >= 20101 && code <= 20199) {
    return `The access token was refused: ${detail} (error ${code}). Ask for a new token, or leave the token field empty to use a development token.`;
  }
  switch (code) {
    case 53105:
      return `The room "${roomName}" is full: it has reached its maximum number of participants (error 53105).`;
    case 53000:
    case 53001:
      if (/reach|lost|closed/i.test(detail)) return unreachable();
      if (/shut|restart/i.test(detail)) return `The server is restarting: ${detail} (error ${code}). Try again in a moment.`;
      return `Signaling failed: ${detail} (error ${code}).`;
    case 53100:
    case 53101:
    case 53102:
      return `That room name can't be used: ${detail} (error ${code}).`;
    case 53006:
      return `The server is restarting and takes no new calls right now (error 53006). Try again in a moment.`;
    case 53118:
      return `The room "${roomName}" has ended (error 53118).`;
    case 53200:
      return `That name can't be used: ${detail} (error 53200).`;
    case 53205:
      return 'You joined this room from somewhere else with the same name, so this page left the call (error 53205).';
    case 53405:
      return `The media connection to the server failed (error 53405). Try joining again.`;
    default:
      return `${detail} (error ${code}).`;
  }
}

/** Why the call ended, when the server or the network ended it. Only 53118 means the room
 * itself ended; a server shutting down, restarting or gone is something to retry. */
function describeDisconnect(error, roomName) {
  const code = error && error.code;
  if (code === 53000 || code === 53001 || code === 53002) {
    return `The server is restarting or unreachable, so you left "${roomName}" (error ${code}). The room may still be going on: join again in a moment.`;
  }
  return describeError(error, roomName);
}

/** Errors the server (or the browser) reports during a call: the call goes on. */
function describeCallError(error) {
  const code = error && typeof error.code === 'number' && error.code ? ` (error ${error.code})` : '';
  const detail = (error && error.message) || 'unknown error';
  if (error && (error.code === 53400 || error.code === 53402 || error.code === 53403 || error.code === 53404)) {
    return `The media connection hit a problem: ${detail}${code}. Some audio or video may be missing; leaving and joining again may help.`;
  }
  return `The server reported a problem: ${detail}${code}. The call goes on.`;
}

function describeTrack(name, kind) {
  if (/^screen/i.test(name || '')) return 'screen share';
  if (kind === 'audio') return 'microphone';
  if (kind === 'video') return 'video';
  return `"${name}" messages`;
}

/** A subscription this browser could not take (trackSubscriptionFailed). */
function describeSubscriptionFailure(error, publication, participant) {
  const what = `${participant.identity}'s ${describeTrack(publication.trackName, publication.kind)}`;
  const verb = publication.kind === 'audio' ? 'heard' : publication.kind === 'video' ? 'shown' : 'received';
  if (error.code === 53404) {
    const codec = publication.kind === 'audio' || publication.kind === 'video' ? `${publication.kind} codec` : 'codec';
    return `${what} can't be ${verb}: your browser lacks the room's ${codec} (${error.message}, error 53404). The rest of the call goes on; another browser may be able to show it.`;
  }
  return `${what} can't be ${verb}: ${error.message} (error ${error.code}).`;
}

/** All the subscriptions that failed for want of a codec, in one message (in a room whose
 * video codec this browser lacks, that is everyone's video). */
function describeCodecFailures(error) {
  const failures = [...state.codecFailures.values()];
  if (failures.length === 1) return describeSubscriptionFailure(error, failures[0].publication, failures[0]);
  const kinds = new Set(failures.map((f) => f.publication.kind));
  const names = failures.map((f) => `${f.identity}'s ${describeTrack(f.publication.trackName, f.publication.kind)}`);
  const list = names.length > 4 ? `${names.slice(0, 3).join(', ')} and ${names.length - 3} more` : `${names.slice(0, -1).join(', ')} and ${names.at(-1)}`;
  const only = kinds.size === 1 ? [...kinds][0] : '';
  const verb = only === 'audio' ? 'heard' : only === 'video' ? 'shown' : 'received';
  const codec = only === 'audio' || only === 'video' ? `${only} codec` : 'codecs';
  return `${list} can't be ${verb}: your browser lacks the room's ${codec} (${error.message}, error 53404). The rest of the call goes on; another browser may be able to show them.`;
}

/** A track of ours the room did not take (trackPublicationFailed). */
function describePublicationFailure(error, track) {
  const what = track.kind === 'video' && !isScreen(track) ? 'camera' : track.kind === 'audio' ? 'microphone' : track.name;
  if (error.code === 53404) {
    const codec = track.kind === 'audio' || track.kind === 'video' ? `${track.kind} codec` : 'codec';
    return `Your ${what} can't be sent: your browser lacks the room's ${codec} (${error.message}, error 53404). The others can't ${track.kind === 'audio' ? 'hear' : 'see'} it; the rest of the call goes on.`;
  }
  return `Could not share your ${what}: ${error.message} (error ${error.code}).`;
}

// --- camera and microphone ------------------------------------------------------------

const VIDEO_CONSTRAINTS = { name: 'camera', width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } };

const DEVICE_KEYS = { audio: 'sfu.microphone', video: 'sfu.camera' };

function savedDevice(kind) {
  try {
    return localStorage.getItem(DEVICE_KEYS[kind]) || '';
  } catch {
    return ''; // storage refused (privacy settings): no remembered choice
  }
}

function saveDevice(kind, deviceId) {
  try {
    localStorage.setItem(DEVICE_KEYS[kind], deviceId);
  } catch {
    // not remembered: still used for this visit
  }
}

/** Constraints for one kind: the camera settings, and exactly the chosen device, if any
 * (browsers may ignore a device that is only `ideal`). */
function constraintsFor(kind, deviceId) {
  const base = kind === 'video' ? { ...VIDEO_CONSTRAINTS } : { name: 'microphone' };
  if (deviceId) base.deviceId = { exact: deviceId };
  return base;
}

/** One kind on its own: the remembered device, or any if that one is gone. */
async function openDevice(kind) {
  const create = kind === 'video' ? Video.createLocalVideoTrack : Video.createLocalAudioTrack;
  const saved = savedDevice(kind);
  try {
    return await create(constraintsFor(kind, saved));
  } catch (error) {
    if (!saved || !['OverconstrainedError', 'NotFoundError'].includes(error && error.name)) throw error;
    return create(constraintsFor(kind, ''));
  }
}

async function acquireMedia() {
  let audioError = null;
  let videoError = null;
  const audioConstraints = constraintsFor('audio', savedDevice('audio'));
  const videoConstraints = constraintsFor('video', savedDevice('video'));
  try {
    for (const track of await Video.createLocalTracks({ audio: audioConstraints, video: videoConstraints })) {
      if (track.kind === 'audio') state.audio = track;
      else state.video = track;
    }
  } catch {
    // Find out which of the two is refused: a person may allow one and not the other.
    const [audio, video] = await Promise.allSettled([openDevice('audio'), openDevice('video')]);
    if (audio.status === 'fulfilled') state.audio = audio.value;
    else audioError = audio.reason;
    if (video.status === 'fulfilled') state.video = video.value;
    else videoError = video.reason;
  }
  for (const track of [state.audio, state.video]) {
    if (track) track.on('stopped', () => renderControls());
  }
  if (state.video) state.video.attach(ui.preview);
  renderPreview();
  if (audioError || videoError) {
    const parts = [];
    const denied = (e) => e && ['NotAllowedError', 'SecurityError', 'PermissionDeniedError'].includes(e.name);
    if (denied(audioError) && denied(videoError)) parts.push('Camera and microphone access was denied.');
    else {
      if (videoError) parts.push(describeMediaError(videoError, 'Camera'));
      if (audioError) parts.push(describeMediaError(audioError, 'Microphone'));
    }
    const missing = !state.audio && !state.video ? 'watch, listen and chat' : state.audio ? 'talk and chat, without video' : 'be seen and chat, without sound';
    parts.push(`You can still join to ${missing}. To use them, allow access in your browser's site settings and reload the page.`);
    showError(parts.join(' '));
  }
  renderControls();
  await renderDevices();
}

function deviceOf(track) {
  if (!track || track.isStopped) return '';
  const settings = track.mediaStreamTrack.getSettings ? track.mediaStreamTrack.getSettings() : {};
  return settings.deviceId || '';
}

/** Fill the camera and microphone lists (labels are known once access was granted). */
async function renderDevices() {
  let devices = [];
  try {
    devices = navigator.mediaDevices && navigator.mediaDevices.enumerateDevices ? await navigator.mediaDevices.enumerateDevices() : [];
  } catch {
    devices = [];
  }
  for (const [select, kind, inputKind, what] of [
    [ui.cameraSelect, 'video', 'videoinput', 'camera'],
    [ui.micSelect, 'audio', 'audioinput', 'microphone'],
  ]) {
    const track = kind === 'video' ? state.video : state.audio;
    const found = devices.filter((d) => d.kind === inputKind && d.deviceId);
    const options = found.map((d, i) => new Option(d.label || `${what[0].toUpperCase()}${what.slice(1)} ${i + 1}`, d.deviceId));
    if (!options.length) options.push(new Option(track ? `This ${what}` : `No ${what} available`, ''));
    select.replaceChildren(...options);
    const current = deviceOf(track);
    if (current && found.some((d) => d.deviceId === current)) select.value = current;
    select.disabled = !found.length || !track || select.dataset.busy === 'true';
  }
}

/** The person picked another camera or microphone before joining: open it instead. */
async function switchDevice(kind) {
  if (state.room || ui.joinForm.getAttribute('aria-busy') === 'true') {
    renderDevices(); // joining (or in the call) with the current devices: the list shows them
    return;
  }
  const select = kind === 'video' ? ui.cameraSelect : ui.micSelect;
  const deviceId = select.value;
  const current = kind === 'video' ? state.video : state.audio;
  if (!deviceId || deviceId === deviceOf(current)) return;
  select.dataset.busy = 'true';
  select.disabled = true;
  ui.joinButton.disabled = true;
  ui.previewStatus.textContent = `Switching ${kind === 'video' ? 'camera' : 'microphone'}…`;
  // One at a time: many cameras (and phones) cannot be open twice.
  if (current) current.stop();
  try {
    const track = kind === 'video'
      ? await Video.createLocalVideoTrack(constraintsFor('video', deviceId))
      : await Video.createLocalAudioTrack(constraintsFor('audio', deviceId));
    track.on('stopped', () => renderControls());
    if (kind === 'video') {
      state.video = track;
      track.attach(ui.preview);
    } else {
      state.audio = track;
    }
    saveDevice(kind, deviceId);
    clearError();
  } catch (error) {
    if (kind === 'video') state.video = null;
    else state.audio = null;
    showError(`${describeMediaError(error, kind === 'video' ? 'Camera' : 'Microphone')} Pick another one, or reload the page.`);
  } finally {
    delete select.dataset.busy;
    ui.joinButton.disabled = false;
    renderPreview();
    renderControls();
    await renderDevices();
  }
}

function renderPreview() {
  const video = state.video;
  const on = Boolean(video && video.isEnabled && ui.joinCam.checked);
  ui.preview.hidden = !on;
  ui.previewOff.hidden = on;
  ui.previewOff.textContent = video ? 'Camera off' : 'No camera';
  const mic = state.audio ? (ui.joinMic.checked ? 'microphone on' : 'microphone off') : 'no microphone';
  const cam = video ? (ui.joinCam.checked ? 'camera on' : 'camera off') : 'no camera';
  ui.previewStatus.textContent = `Preview: ${cam}, ${mic}.`;
  ui.joinMic.disabled = !state.audio;
  ui.joinCam.disabled = !video;
}

// --- joining --------------------------------------------------------------------------

async function devToken(identity, room) {
  let response;
  try {
    response = await fetch('/dev/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ identity, room }),
    });
  } catch {
    throw new UiError(unreachable());
  }
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: fall through with the status
  }
  if (response.status === 403) {
    const why = body.message && /loopback|origin|localhost/i.test(body.message) ? ` ${body.message}` : '';
    throw new UiError(
      `This server does not hand out development tokens${why ? ' to this page' : ''}.${why} Paste an access token from your application's server under "I have an access token".`,
    );
  }
  if (!response.ok || !body.token) {
    if (response.status >= 502) throw new UiError(unreachable());
    throw new UiError(`The server refused a development token: ${body.message || `HTTP ${response.status}`}.`);
  }
  return body.token;
}

async function join(event) {
  event.preventDefault();
  if (state.room) return;
  clearError();
  const roomName = ui.roomInput.value.trim();
  const identity = ui.identityInput.value.trim();
  const pasted = ui.tokenInput.value.trim();
  for (const [input, value] of [[ui.roomInput, roomName], [ui.identityInput, identity]]) {
    input.setAttribute('aria-invalid', value ? 'false' : 'true');
  }
  if (!roomName || !identity) {
    showError(!roomName ? 'Enter the name of the room to join.' : 'Enter your name: the others see it on your tile.');
    (!roomName ? ui.roomInput : ui.identityInput).focus();
    return;
  }
  setJoining(true);
  let chat = null;
  try {
    await state.mediaReady;
    const token = pasted || (await devToken(identity, roomName));
    if (state.audio) state.audio.enable(ui.joinMic.checked);
    if (state.video) state.video.enable(ui.joinCam.checked);
    chat = new Video.LocalDataTrack({ name: 'chat' });
    const tracks = [state.audio, state.video].filter((t) => t && !t.isStopped);
    // ICE servers come from the server (sfu serve --ice-server); ?iceTransportPolicy=relay
    // makes the call go through its TURN server only (to check that TURN works).
    const options = {
      name: roomName,
      tracks: [...tracks, chat],
      preferredVideoCodecs: [{ codec: 'VP8', simulcast: true }],
      ...SPEAKER_AND_QUALITY_OPTIONS,
    };
    if (state.iceTransportPolicy) options.iceTransportPolicy = state.iceTransportPolicy;
    const room = await Video.connect(token, options);
    state.chat = chat;
    enterRoom(room);
  } catch (error) {
    showError(describeError(error, roomName));
    ui.joinButton.focus();
  } finally {
    setJoining(false);
  }
}

function setJoining(joining) {
  ui.joinButton.disabled = joining;
  ui.joinButton.textContent = joining ? 'Joining…' : 'Join';
  ui.joinForm.setAttribute('aria-busy', String(joining));
}

function enterRoom(room) {
  state.room = room;
  window.room = room; // handy from the browser console
  state.draining = false;
  ui.join.hidden = true;
  ui.call.hidden = false;
  document.body.classList.add('in-call');
  ui.callTitle.hidden = false;
  ui.roomName.textContent = room.name;
  document.title = `${room.name} · Video rooms`;
  clearChat();

  addLocalTile(room);
  for (const participant of room.participants.values()) addParticipant(participant);
  watchDominantSpeaker(room);

  room.on('participantConnected', (p) => {
    addParticipant(p);
    notice(`${p.identity} joined.`);
  });
  room.on('participantDisconnected', (p) => {
    removeParticipant(p);
    notice(`${p.identity} left.`);
  });
  room.on('participantReconnecting', (p) => renderParticipant(p));
  room.on('participantReconnected', (p) => renderParticipant(p));
  room.on('trackSubscribed', (track, publication, p) => {
    state.codecFailures.delete(publication.trackSid);
    trackSubscribed(track, p);
  });
  room.on('trackUnsubscribed', (track, publication, p) => trackUnsubscribed(track, p));
  room.on('trackUnpublished', (publication) => state.codecFailures.delete(publication.trackSid));
  for (const event of ['trackPublished', 'trackUnpublished']) room.on(event, (publication, p) => renderParticipant(p));
  for (const event of ['trackEnabled', 'trackDisabled']) room.on(event, (track, p) => renderParticipant(p));
  room.on('trackMessage', (data, track, p) => {
    if (track.name === 'chat') addChat(p.identity, typeof data === 'string' ? data : new TextDecoder().decode(data), false);
  });
  room.on('reconnecting', () => renderRoomState());
  room.on('reconnected', () => renderRoomState());
  room.on('disconnected', (r, error) => leaveRoom(error));
  room.on('serverDraining', (seconds) => {
    state.draining = true;
    const within = typeof seconds === 'number' ? `within ${Math.ceil(seconds)} s` : 'soon';
    showError(`The server is restarting: this call will end ${within}. You can join again once it is back.`, 'warning');
    renderRoomState();
  });
  room.on('trackSubscriptionFailed', (error, publication, p) => {
    state.shown.add(error);
    if (error.code === 53404) {
      state.codecFailures.set(publication.trackSid, { identity: p.identity, publication });
      showError(describeCodecFailures(error));
    } else {
      showError(describeSubscriptionFailure(error, publication, p));
    }
    renderParticipant(p);
  });
  room.localParticipant.on('trackPublicationFailed', (error, track) => {
    state.shown.add(error);
    showError(describePublicationFailure(error, track));
  });
  // Any other error during the call: never silent while the header says "Connected".
  room.on('error', (error) => {
    if (!state.shown.has(error)) showError(describeCallError(error));
  });
  renderRoomState();
  renderControls();
  ui.micButton.focus();
}

function leaveRoom(error) {
  const room = state.room;
  if (!room) return;
  state.room = null;
  window.room = null;
  stopScreenShare(false);
  for (const tile of state.tiles.values()) detachTile(tile);
  state.tiles.clear();
  ui.tiles.replaceChildren();
  state.chat = null;
  ui.call.hidden = true;
  ui.callTitle.hidden = true;
  ui.join.hidden = false;
  document.body.classList.remove('in-call');
  state.draining = false;
  state.codecFailures.clear();
  setUnread(0);
  document.title = 'Video rooms';
  if (state.video) state.video.attach(ui.preview);
  renderPreview();
  renderDevices();
  if (error) showError(describeDisconnect(error, room.name));
  else notice(`You left ${room.name}.`);
  ui.joinButton.focus();
}

// --- who speaks, and how good each network is (issue 12) -------------------------------
// The server decides the dominant speaker from the audio levels it forwards and measures each
// participant's network (sdk.js: dominantSpeaker, networkQuality). The dominant speaker's tile
// is highlighted (class "dominant"), each tile lights a speaking dot (data-speaking) and shows
// five network quality bars (data-quality 0-5, or "unknown").

const SPEAKER_AND_QUALITY_OPTIONS = { dominantSpeaker: true, networkQuality: { local: 1, remote: 1 } };

function addIndicators(tile, participant) {
  const dot = document.createElement('span');
  dot.className = 'speaking';
  dot.setAttribute('aria-hidden', 'true');
  tile.append(dot);
  const bars = document.createElement('span');
  bars.className = 'quality';
  bars.setAttribute('role', 'img');
  for (let i = 0; i < 5; i += 1) bars.append(Object.assign(document.createElement('span'), { className: 'bar' }));
  tile.querySelector('.badges').append(bars);
  const render = () => renderIndicators(tile, participant);
  participant.on('isSpeakingChanged', render);
  participant.on('networkQualityLevelChanged', render);
  render();
  if (state.room) renderDominant(state.room);
}

function renderIndicators(tile, participant) {
  tile.dataset.speaking = String(Boolean(participant.isSpeaking));
  const level = participant.networkQualityLevel;
  tile.dataset.quality = Number.isInteger(level) ? String(level) : 'unknown';
  tile.querySelector('.quality').setAttribute('aria-label', Number.isInteger(level) ? `Network quality ${level} of 5` : 'Network quality unknown');
}

function watchDominantSpeaker(room) {
  room.on('dominantSpeakerChanged', () => renderDominant(room));
  renderDominant(room);
}

function renderDominant(room) {
  const sid = room.dominantSpeaker ? room.dominantSpeaker.sid : null;
  for (const [key, tile] of state.tiles) {
    const dominant = key === sid;
    tile.classList.toggle('dominant', dominant);
    if (dominant) tile.dataset.dominant = 'true';
    else delete tile.dataset.dominant;
  }
}

// --- tiles ----------------------------------------------------------------------------

function makeTile(key, name, extra = {}) {
  const tile = ui.tileTemplate.content.firstElementChild.cloneNode(true);
  tile.dataset.key = key;
  tile.querySelector('.name').textContent = name;
  tile.querySelector('.avatar').textContent = initials(extra.identity || name);
  tile.setAttribute('aria-label', name);
  Object.assign(tile.dataset, extra);
  state.tiles.set(key, tile);
  ui.tiles.append(tile);
  return tile;
}

function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  return words.slice(0, 2).map((w) => [...w][0].toUpperCase()).join('') || '?';
}

function detachTile(tile) {
  for (const el of tile.querySelectorAll('video, audio')) {
    if (el._track) el._track.detach(el);
    el.remove();
  }
}

function removeTile(key) {
  const tile = state.tiles.get(key);
  if (!tile) return;
  detachTile(tile);
  tile.remove();
  state.tiles.delete(key);
}

function setBadge(tile, which, text, value) {
  const badge = tile.querySelector(`.badge.${which}`);
  badge.textContent = text;
  badge.dataset.value = value;
  tile.dataset[which === 'conn' ? 'state' : which === 'mic' ? 'mic' : 'camera'] = value;
}

function addLocalTile(room) {
  const tile = makeTile('local', `You (${room.localParticipant.identity})`, { local: 'true', identity: room.localParticipant.identity });
  tile.classList.add('local');
  addIndicators(tile, room.localParticipant);
  if (state.video) attachMedia(tile, state.video, true);
  renderLocal();
}

function renderLocal() {
  const tile = state.tiles.get('local');
  if (!tile || !state.room) return;
  const audio = state.audio && !state.audio.isStopped ? state.audio : null;
  const video = state.video && !state.video.isStopped ? state.video : null;
  setBadge(tile, 'mic', audio ? (audio.isEnabled ? 'Mic on' : 'Muted') : 'No mic', audio ? (audio.isEnabled ? 'on' : 'muted') : 'none');
  setBadge(tile, 'cam', video ? (video.isEnabled ? 'Camera on' : 'Camera off') : 'No camera', video ? (video.isEnabled ? 'on' : 'off') : 'none');
  tile.classList.toggle('camera-off', !(video && video.isEnabled));
  const s = state.room.state;
  setBadge(tile, 'conn', s === 'reconnecting' ? 'Reconnecting…' : 'Connected', s);
}

function addParticipant(p) {
  if (state.tiles.has(p.sid)) return;
  addIndicators(makeTile(p.sid, p.identity, { participantSid: p.sid, identity: p.identity }), p);
  for (const publication of p.tracks.values()) {
    if (publication.track) trackSubscribed(publication.track, p);
  }
  renderParticipant(p);
}

function removeParticipant(p) {
  for (const key of [...state.tiles.keys()]) {
    if (key === p.sid || key.startsWith(`${p.sid}/`)) removeTile(key);
  }
}

function isScreen(track) {
  return /^screen/i.test(track.name);
}

function renderParticipant(p) {
  const tile = state.tiles.get(p.sid);
  if (!tile) return;
  const audio = [...p.audioTracks.values()];
  const cameras = [...p.videoTracks.values()].filter((pub) => !/^screen/i.test(pub.trackName));
  const micOn = audio.some((pub) => pub.isTrackEnabled);
  const camOn = cameras.some((pub) => pub.isTrackEnabled);
  // A video this browser cannot decode: say so on the tile, not just "Camera on" over an avatar.
  const unplayable = cameras.length > 0 && cameras.every((pub) => state.codecFailures.has(pub.trackSid));
  setBadge(tile, 'mic', !audio.length ? 'No mic' : micOn ? 'Mic on' : 'Muted', !audio.length ? 'none' : micOn ? 'on' : 'muted');
  setBadge(tile, 'cam', !cameras.length ? 'No camera' : unplayable ? 'Video unsupported' : camOn ? 'Camera on' : 'Camera off',
    !cameras.length ? 'none' : unplayable ? 'unsupported' : camOn ? 'on' : 'off');
  const hasVideo = Boolean(tile.querySelector('video'));
  tile.classList.toggle('camera-off', !(camOn && hasVideo));
  setBadge(tile, 'conn', p.state === 'reconnecting' ? 'Reconnecting…' : 'Connected', p.state);
}

function attachMedia(tile, track, local) {
  const el = track.attach();
  el._track = track;
  el.dataset.trackSid = track.sid || '';
  el.dataset.trackName = track.name;
  if (track.kind === 'video') {
    el.setAttribute('aria-label', `${tile.getAttribute('aria-label')}: video`);
    if (local && !isScreen(track)) el.classList.add('mirror');
    tile.querySelector('.media').prepend(el);
  } else {
    el.hidden = true;
    tile.append(el);
  }
  return el;
}

function trackSubscribed(track, p) {
  if (track.kind === 'data') return;
  const tile = state.tiles.get(p.sid);
  if (!tile) return;
  if (track.kind === 'video' && (isScreen(track) || tile.querySelector('video'))) {
    // Screen shares and any further video get a tile of their own.
    const key = `${p.sid}/${track.sid}`;
    if (!state.tiles.has(key)) {
      const label = isScreen(track) ? `${p.identity}’s screen` : `${p.identity} (${track.name})`;
      const extra = makeTile(key, label, { participantSid: p.sid, identity: p.identity, screen: String(isScreen(track)) });
      extra.classList.add(isScreen(track) ? 'screen' : 'extra');
      extra.querySelector('.badges').hidden = true;
      attachMedia(extra, track, false);
    }
    return;
  }
  attachMedia(tile, track, false);
  renderParticipant(p);
}

function trackUnsubscribed(track, p) {
  removeTile(`${p.sid}/${track.sid}`);
  const tile = state.tiles.get(p.sid);
  if (tile) {
    for (const el of tile.querySelectorAll('video, audio')) {
      if (el._track === track) {
        track.detach(el);
        el.remove();
      }
    }
    renderParticipant(p);
  }
}

function renderRoomState() {
  const room = state.room;
  if (!room) return;
  const reconnecting = room.state === 'reconnecting';
  ui.roomState.textContent = reconnecting ? 'Reconnecting…' : state.draining ? 'Server restarting' : 'Connected';
  ui.roomState.dataset.state = state.draining && !reconnecting ? 'draining' : room.state;
  if (reconnecting) notice('Connection lost: reconnecting…');
  renderLocal();
}

// --- controls -------------------------------------------------------------------------

function setButton(button, label, active, disabled = false) {
  button.querySelector('.label').textContent = label;
  button.dataset.active = String(active); // styling only: the label itself says what a press does
  button.disabled = disabled;
}

function renderControls() {
  const audio = state.audio && !state.audio.isStopped ? state.audio : null;
  const video = state.video && !state.video.isStopped ? state.video : null;
  // Each label names what pressing does (Mute / Unmute...), so no aria-pressed on top.
  setButton(ui.micButton, !audio ? 'No microphone' : audio.isEnabled ? 'Mute' : 'Unmute', Boolean(audio && !audio.isEnabled), !audio);
  setButton(ui.camButton, !video ? 'No camera' : video.isEnabled ? 'Stop camera' : 'Start camera', Boolean(video && !video.isEnabled), !video);
  const canShare = Boolean(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
  setButton(ui.screenButton, !canShare ? 'Screen sharing unavailable' : state.screen ? 'Stop sharing' : 'Share screen', Boolean(state.screen), !canShare);
  renderLocal();
}

function toggle(track) {
  if (!track) return;
  track.enable(!track.isEnabled);
  const tile = state.tiles.get('local');
  if (tile && track.kind === 'video') tile.classList.toggle('camera-off', !track.isEnabled);
  renderControls();
}

async function toggleScreenShare() {
  if (state.screen) {
    stopScreenShare(true);
    return;
  }
  const room = state.room;
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
  } catch (error) {
    notice(error.name === 'NotAllowedError' ? 'Screen sharing was cancelled.' : `Screen sharing failed: ${error.message}`);
    return;
  }
  if (state.room !== room || !room) {
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  const track = new Video.LocalVideoTrack(stream.getVideoTracks()[0], { name: 'screen' });
  state.screen = track;
  track.on('stopped', () => stopScreenShare(true)); // the browser's own "Stop sharing"
  const tile = makeTile('local/screen', 'Your screen', { local: 'true', screen: 'true' });
  tile.classList.add('screen', 'local');
  tile.querySelector('.badges').hidden = true;
  attachMedia(tile, track, true);
  renderControls();
  try {
    await room.localParticipant.publishTrack(track);
  } catch (error) {
    if (state.screen === track) {
      stopScreenShare(false);
      showError(`Could not share your screen: ${error.message} (error ${error.code}).`);
    }
  }
}

function stopScreenShare(unpublish) {
  const track = state.screen;
  if (!track) return;
  state.screen = null;
  if (unpublish && state.room) state.room.localParticipant.unpublishTrack(track);
  removeTile('local/screen');
  track.stop();
  renderControls();
}

// --- chat -----------------------------------------------------------------------------

function clearChat() {
  ui.chatLog.replaceChildren();
}

function addChat(from, text, mine) {
  const item = document.createElement('li');
  item.className = mine ? 'mine' : '';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = mine ? 'You' : from;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  const time = document.createElement('time');
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  item.append(who, ' ', body, ' ', time);
  ui.chatLog.append(item);
  while (ui.chatLog.childElementCount > MAX_CHAT_ENTRIES) ui.chatLog.firstElementChild.remove();
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
  if (!mine && !chatInSight()) {
    setUnread(state.unread + 1);
    notice(`${from}: ${text.length > 80 ? `${text.slice(0, 80)}…` : text}`);
  }
}

/** True when the person can see the chat: the tab is shown and the message list is on screen
 * (not scrolled away, nor under the call controls that stay at the bottom of small screens). */
function chatInSight() {
  if (document.visibilityState === 'hidden' || ui.call.hidden) return false;
  const box = ui.chatLog.getBoundingClientRect();
  const controls = ui.controls.getBoundingClientRect();
  const bottom = getComputedStyle(ui.controls).position === 'fixed' ? controls.top : window.innerHeight;
  return Math.min(box.bottom, bottom) - Math.max(box.top, 0) >= 40;
}

function setUnread(count) {
  state.unread = count;
  ui.chatCount.textContent = count > 99 ? '99+' : String(count);
  ui.chatCount.hidden = count === 0;
  if (count) ui.chatButton.setAttribute('aria-label', `Chat, ${count} unread`);
  else ui.chatButton.removeAttribute('aria-label');
  const title = state.room ? `${state.room.name} · Video rooms` : 'Video rooms';
  document.title = count ? `(${count}) ${title}` : title;
}

function markChatRead() {
  if (state.unread && chatInSight()) setUnread(0);
}

function openChat() {
  ui.chat.scrollIntoView({ block: 'end' });
  ui.chatInput.focus({ preventScroll: true });
  setUnread(0);
}

/** The height of the call controls, for the layout that keeps them at the bottom. */
function trackControlsHeight() {
  const update = () => document.documentElement.style.setProperty('--controls-h', `${Math.ceil(ui.controls.getBoundingClientRect().height)}px`);
  if (typeof ResizeObserver !== 'undefined') new ResizeObserver(update).observe(ui.controls);
  update();
}

function sendChat(event) {
  event.preventDefault();
  const text = ui.chatInput.value.trim();
  if (!text || !state.chat) return;
  state.chat.send(text);
  addChat('', text, true);
  ui.chatInput.value = '';
  ui.chatInput.focus();
}

// --- wiring ---------------------------------------------------------------------------

function start() {
  const params = new URLSearchParams(location.search);
  if (params.get('room')) ui.roomInput.value = params.get('room');
  if (params.get('identity')) ui.identityInput.value = params.get('identity');
  if (['relay', 'all'].includes(params.get('iceTransportPolicy'))) state.iceTransportPolicy = params.get('iceTransportPolicy');
  ui.joinForm.addEventListener('submit', join);
  ui.joinMic.addEventListener('change', renderPreview);
  ui.joinCam.addEventListener('change', renderPreview);
  ui.micButton.addEventListener('click', () => toggle(state.audio));
  ui.camButton.addEventListener('click', () => toggle(state.video));
  ui.screenButton.addEventListener('click', toggleScreenShare);
  ui.leaveButton.addEventListener('click', () => state.room && state.room.disconnect());
  ui.chatForm.addEventListener('submit', sendChat);
  ui.chatButton.addEventListener('click', openChat);
  ui.messageDismiss.addEventListener('click', dismissError);
  ui.message.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') dismissError();
  });
  ui.cameraSelect.addEventListener('change', () => switchDevice('video'));
  ui.micSelect.addEventListener('change', () => switchDevice('audio'));
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener('devicechange', () => renderDevices());
  }
  window.addEventListener('scroll', markChatRead, { passive: true });
  window.addEventListener('resize', markChatRead, { passive: true });
  document.addEventListener('visibilitychange', markChatRead);
  ui.chatLog.addEventListener('scroll', markChatRead, { passive: true });
  ui.chatInput.addEventListener('focus', () => setUnread(0));
  trackControlsHeight();
  if (!Video.isSupported()) showError('This browser does not support WebRTC: use a current Chrome, Edge, Firefox or Safari.');
  state.mediaReady = acquireMedia();
}

start();
