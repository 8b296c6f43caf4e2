// Ponte in the browser. Plain JavaScript, no build step, nothing fetched
// from anywhere but this origin. Everything others wrote (messages, names,
// file names) is put on the page as text (textContent), never as HTML.
'use strict';

const TICKS = { queued: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '⚠ not sent', expired: '⌛ expired' };
const $ = (id) => document.getElementById(id);

// The per-launch secret: from the fragment into this tab's storage (scoped
// to this exact origin), then out of the address bar.
let secret = sessionStorage.getItem('ponte-secret');
if (location.hash.length > 1) {
  secret = location.hash.slice(1);
  sessionStorage.setItem('ponte-secret', secret);
  history.replaceState(null, '', location.pathname);
}

const state = {
  version: 0,
  me: null,
  phase: null,
  chats: [],
  open: null,          // the peer whose chat is open
  drafts: new Map(),   // peer -> what was typed in its chat and not sent
  messages: new Map(), // id -> element, in the open chat
  older: null,
  lastDay: null,
  firstDay: null,
  localImages: new Map(), // id -> object URL of a picture sent from this tab
  unreadTotal: 0,
};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function api(method, path, body, raw) {
  const headers = { 'X-Ponte-Secret': secret || '' };
  let payload;
  if (raw !== undefined) {
    payload = raw;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const r = await fetch(path, { method, headers, body: payload, credentials: 'omit', cache: 'no-store' });
  if (!r.ok) {
    let text = r.statusText;
    try { text = (await r.json()).error || text; } catch (_) { /* not JSON */ }
    throw new Error(text);
  }
  return r;
}
const getJson = async (path) => (await api('GET', path)).json();
const postJson = async (path, body) => (await api('POST', path, body || {})).json();

function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

function show(screen) {
  for (const id of ['gate', 'setup', 'unlock', 'failed', 'main']) $(id).hidden = id !== screen;
}

// ------------------------------------------------------------------ state

function applyState(s) {
  // An answer and a live event can cross: never go back to an older state.
  if (s.version < state.version) return;
  state.version = s.version;
  const before = state.phase;
  state.phase = s.phase;
  state.me = s.handle;
  if (s.phase === 'setup') show('setup');
  else if (s.phase === 'locked') show('unlock');
  else if (s.phase === 'failed') { show('failed'); $('failed-text').textContent = s.error || ''; }
  else if (s.phase === 'ready') {
    show('main');
    $('me').textContent = s.handle || '';
    if (before !== 'ready') loadChats();
  }
  const r = $('route-status');
  const routeChanged = (r.dataset.route || '') !== (s.route || '') || r.dataset.state !== s.connection;
  let label;
  const direct = (s.route || '').startsWith('direct');
  if (s.connection === 'online') {
    label = direct ? 'direct' : (s.route || 'online');
  } else if (s.connection === 'offline') {
    label = 'offline';
  } else {
    label = 'connecting…';
  }
  if (s.waiting > 0) label += ` · ${s.waiting} waiting`;
  r.textContent = label;
  r.dataset.state = s.connection;
  r.dataset.route = s.route || '';
  r.dataset.waiting = String(s.waiting || 0);
  r.title = s.detail || label;
  if (routeChanged && !$('panel').hidden && !$('relays-panel').hidden) openRelays();
  $('route-detail').textContent = s.connection === 'online'
    ? `Connected: ${direct ? 'directly to the server' : 'through ' + s.route}.`
    : (s.detail || 'Not connected.');
}

// ------------------------------------------------------------------ chats

let chatsAsked = 0;
async function fetchChats() {
  // Answers can cross: only the newest request's answer is drawn.
  const asked = ++chatsAsked;
  try {
    const { chats } = await getJson('/api/chats');
    if (asked !== chatsAsked) return;
    state.chats = chats;
    renderChats();
  } catch (e) { toast(e.message); }
}

// The chat list, read again. Calls that come while a read is under way
// share one more read after it: a burst of live events (ticks of many
// messages) costs two reads, not one each. The promise settles once a read
// that started after the call is drawn.
let chatsLoading = null;
let chatsNext = null;
function loadChats() {
  if (!chatsLoading) {
    chatsLoading = fetchChats().finally(() => { chatsLoading = null; });
    return chatsLoading;
  }
  if (!chatsNext) {
    chatsNext = chatsLoading.then(() => { chatsNext = null; return loadChats(); });
  }
  return chatsNext;
}

// Formatters made once: each toLocale…String call with options builds a
// new one, which costs more than the rest of a message's rendering.
const CLOCK = new Intl.DateTimeFormat([], { hour: '2-digit', minute: '2-digit' });
const DAY = new Intl.DateTimeFormat([], { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
const DATE = new Intl.DateTimeFormat([]);

function timeLabel(ms) {
  const d = new Date(ms);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return CLOCK.format(d);
  return DATE.format(d);
}

function preview(m) {
  if (!m) return '';
  if (m.unreadable) return 'unreadable message';
  if (m.notice) return noticeText(m);
  if (m.group && !m.outgoing) return `${m.peer}: ${m.file ? '📎 ' + m.file.name : m.text}`;
  if (m.file) return `📎 ${m.file.name}${m.text ? ' — ' + m.text : ''}`;
  return m.text;
}

function renderChats() {
  const list = $('chat-list');
  const q = $('search').value.trim().toLowerCase();
  list.replaceChildren();
  let total = 0;
  for (const c of state.chats) {
    total += c.unread;
    const name = chatName(c);
    if (q && !name.toLowerCase().includes(q)) continue;
    const li = el('li', 'chat' + (c.peer === state.open ? ' active' : ''));
    li.dataset.testid = 'chat-item';
    li.setAttribute('data-testid', 'chat-item');
    li.dataset.peer = c.peer;
    li.tabIndex = 0;
    const top = el('div', 'row');
    const n = el('span', 'name', name);
    if (c.group) n.prepend(groupIcon());
    top.append(n);
    if (c.key_changed) top.append(el('span', 'warn-dot', '⚠'));
    top.append(el('span', 'time', c.last ? timeLabel(c.last.sent_at) : ''));
    const bottom = el('div', 'row');
    const p = el('span', 'preview');
    if (c.last && c.last.outgoing && !c.last.notice) {
      const st = shownStatus(c.last);
      p.append(el('span', 'tick ' + st, TICKS[st] || ''), ' ');
    }
    p.append(preview(c.last));
    bottom.append(p);
    if (c.unread > 0) {
      const badge = el('span', 'badge', String(c.unread));
      badge.setAttribute('data-testid', 'unread');
      bottom.append(badge);
    }
    li.append(top, bottom);
    li.addEventListener('click', () => openChat(c.peer));
    li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') openChat(c.peer); });
    list.append(li);
  }
  state.unreadTotal = total;
  document.title = total > 0 ? `(${total}) Ponte` : 'Ponte';
}

// ------------------------------------------------------------------ conversation

function dayLabel(ms) {
  const d = new Date(ms);
  const today = new Date();
  const yesterday = new Date(Date.now() - 86400000);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return DAY.format(d);
}

function humanSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(1)} GiB`;
}

function isImage(f) {
  return ['image/png', 'image/jpeg', 'image/gif', 'image/webp'].includes((f.mime || '').toLowerCase());
}

async function fileBlob(id) {
  const r = await api('GET', `/api/file/${id}`);
  return r.blob();
}

function fileCard(m) {
  const f = m.file;
  const card = el('div', 'file-card');
  card.setAttribute('data-testid', 'file-card');
  const icon = el('img', 'file-icon');
  icon.src = '/attach.svg';
  icon.alt = '';
  card.append(icon);
  const meta = el('div', 'file-meta');
  const name = el('span', 'file-name', f.name);
  name.setAttribute('data-testid', 'file-name');
  meta.append(name, el('span', 'file-size', humanSize(f.size)));
  card.append(meta);
  if (!m.outgoing) {
    const b = el('button', 'download', f.state === 'fetched' ? 'Download' : 'Fetch');
    b.type = 'button';
    b.setAttribute('data-testid', 'download');
    b.addEventListener('click', async () => {
      try {
        if (f.state !== 'fetched') {
          b.textContent = 'Fetching…';
          await postJson(`/api/file/${m.id}/fetch`);
          f.state = 'fetched';
        }
        const blob = await fileBlob(m.id);
        const a = el('a');
        a.href = URL.createObjectURL(blob);
        a.download = f.name;
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 60000);
        b.textContent = 'Download';
      } catch (e) { toast(e.message); b.textContent = 'Retry'; }
    });
    card.append(b);
  } else {
    card.append(el('span', 'file-state', f.state === 'uploading' ? 'uploading…' : ''));
  }
  return card;
}

function imageBox(m) {
  const box = el('div', 'image');
  const img = el('img');
  img.alt = m.file.name;
  img.addEventListener('load', () => {
    const box = $('messages');
    if (box.scrollHeight - box.scrollTop - box.clientHeight < img.height + 80) box.scrollTop = box.scrollHeight;
  });
  img.setAttribute('data-testid', 'image');
  box.append(img);
  const local = state.localImages.get(m.id);
  if (local) {
    img.src = local;
  } else if (!m.outgoing && m.file.state === 'fetched') {
    fileBlob(m.id).then((b) => { img.src = URL.createObjectURL(b); img.dataset.loaded = '1'; })
      .catch((e) => { box.replaceWith(fileCard(m)); toast(e.message); });
  } else {
    return fileCard(m);
  }
  return box;
}

function messageNode(m) {
  if (m.notice) return noticeNode(m);
  const row = el('div', 'msg ' + (m.outgoing ? 'out' : 'in'));
  row.setAttribute('data-testid', 'message');
  row.dataset.id = m.id;
  const status = shownStatus(m);
  row.dataset.status = status;
  const bubble = el('div', 'bubble');
  if (m.group && !m.outgoing) {
    const who = el('div', 'sender', m.peer);
    who.setAttribute('data-testid', 'sender');
    who.style.color = senderColour(m.peer);
    bubble.append(who);
  }
  if (m.key_changed && !m.outgoing) bubble.append(el('div', 'warn', '⚠ sent under a new, unverified key'));
  if (m.reply) bubble.append(quoteNode(m.reply));
  if (m.unreadable) {
    bubble.append(el('div', 'warn', 'This message could not be read: the stored data is damaged.'));
  }
  if (m.file) bubble.append(isImage(m.file) ? imageBox(m) : fileCard(m));
  if (m.text) {
    const t = el('div', 'text', m.text);
    t.setAttribute('data-testid', 'message-text');
    bubble.append(t);
  }
  const meta = el('div', 'meta');
  meta.append(el('span', 'time', CLOCK.format(new Date(m.sent_at))));
  if (m.outgoing) {
    const tick = el('span', 'tick ' + status, TICKS[status] || status);
    tick.setAttribute('data-testid', 'tick');
    tick.title = status;
    meta.append(tick);
    if (m.ticks) {
      const t = m.ticks;
      const g = el('span', 'group-ticks', `${t.read_by}/${t.of} read`);
      g.setAttribute('data-testid', 'group-ticks');
      g.dataset.deliveredTo = String(t.delivered_to);
      g.dataset.readBy = String(t.read_by);
      g.dataset.of = String(t.of);
      g.dataset.expired = String(t.expired || 0);
      g.title = `delivered to ${t.delivered_to} of ${t.of}, read by ${t.read_by} of ${t.of}` +
        (t.expired ? `; expired undelivered for ${t.expired}` : '');
      tick.title = g.title;
      meta.append(g);
    }
  }
  bubble.append(meta);
  row.append(bubble);
  if (!m.unreadable) addReplyButton(row, m);
  return row;
}

function appendMessage(m, scroll) {
  if (state.messages.has(m.id)) { updateMessage(m); return; }
  const box = $('messages');
  const day = dayLabel(m.sent_at);
  if (day !== state.lastDay) {
    const sep = el('div', 'day', day);
    sep.setAttribute('data-testid', 'day');
    box.append(sep);
    state.lastDay = day;
  }
  const node = messageNode(m);
  state.messages.set(m.id, node);
  box.append(node);
  if (scroll) box.scrollTop = box.scrollHeight;
}

function updateMessage(m) {
  const old = state.messages.get(m.id);
  if (!old) return;
  const node = messageNode(m);
  old.replaceWith(node);
  state.messages.set(m.id, node);
}

function renderBanner(contact) {
  const b = $('key-banner');
  if (contact && contact.key_changed && !isGroup(state.open)) {
    b.textContent = `${state.open}'s security key has CHANGED. Messages to them are held until you compare the new safety number with them and mark it verified.`;
    const btn = el('button', '', 'Compare safety numbers');
    btn.type = 'button';
    btn.addEventListener('click', () => openContact(state.open));
    b.append(' ', btn);
    b.hidden = false;
  } else {
    b.hidden = true;
  }
}

// Keeps what is typed in the open chat's composer as that chat's draft.
function keepDraft() {
  if (!state.open) return;
  const text = $('composer').value;
  if (text) state.drafts.set(state.open, text); else state.drafts.delete(state.open);
}

// Opens `peer`'s chat (at the search hit `at`, if given). With `refresh`,
// loads the open chat again instead (after a change to it, or a resync):
// what is being typed, the reply being written and the focus stay as
// they are, so a live event never moves keystrokes elsewhere.
async function openChat(peer, at, refresh = false) {
  const again = refresh && state.open === peer;
  if (!again) {
    // Each chat keeps its own draft: text typed for one is never sent
    // to another.
    keepDraft();
    cancelReply();
    $('composer').value = state.drafts.get(peer) || '';
    autoGrow();
  }
  state.open = peer;
  state.jumped = !!at;
  state.messages.clear();
  state.lastDay = null;
  $('empty').hidden = true;
  $('conv-inner').hidden = false;
  $('peer-name').textContent = chatName(state.chats.find((c) => c.peer === peer) || { peer });
  $('info').textContent = isGroup(peer) ? 'Group info' : 'Contact info';
  renderTimer(null);
  $('conv-error').textContent = '';
  document.body.classList.add('in-chat');
  const box = $('messages');
  box.replaceChildren();
  try {
    // Opened at a search hit: the page that ends a little after it.
    const q = at ? `?before=${at.seq + 20}` : '';
    const page = await getJson(`/api/chat/${encodeURIComponent(peer)}${q}`);
    if (state.open !== peer) return;
    state.older = page.older;
    if (page.older !== null) box.append(loadOlderButton(peer));
    for (const m of page.messages) appendMessage(m, false);
    box.scrollTop = box.scrollHeight;
    if (at) { box.append(newestButton(peer)); highlight(at.id); }
    renderBanner(page.contact);
    renderTimer(page.timer);
    if (page.group) {
      $('peer-name').textContent = page.group.title;
      $('composer').disabled = page.group.status !== 'member';
      $('composer').placeholder = page.group.status === 'member' ? 'Type a message' : `You are no longer in this group (${page.group.status})`;
    } else {
      $('composer').disabled = false;
      $('composer').placeholder = 'Type a message';
    }
    await markRead();
  } catch (e) { $('conv-error').textContent = e.message; }
  loadChats();
  if (!again && state.open === peer) $('composer').focus();
}

function loadOlderButton(peer) {
  const b = el('button', 'older', 'Load earlier messages');
  b.type = 'button';
  b.addEventListener('click', async () => {
    if (b.dataset.loading) return;
    b.dataset.loading = '1';
    try {
      const page = await getJson(`/api/chat/${encodeURIComponent(peer)}?before=${state.older}`);
      if (state.open !== peer) return;
      const box = $('messages');
      const height = box.scrollHeight;
      const frag = document.createDocumentFragment();
      let day = null;
      for (const m of page.messages) {
        if (state.messages.has(m.id)) continue;
        const d = dayLabel(m.sent_at);
        if (d !== day) { frag.append(el('div', 'day', d)); day = d; }
        const node = messageNode(m);
        state.messages.set(m.id, node);
        frag.append(node);
      }
      b.remove();
      box.prepend(frag);
      state.older = page.older;
      if (page.older !== null) box.prepend(loadOlderButton(peer));
      box.scrollTop = box.scrollHeight - height;
    } catch (e) { b.dataset.loading = ''; toast(e.message); }
  });
  return b;
}

async function markRead() {
  if (!state.open || document.hidden) return;
  const peer = state.open;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await postJson(`/api/chat/${encodeURIComponent(peer)}/read`);
      return;
    } catch (e) {
      if (attempt === 2) toast(e.message);
      await new Promise((res) => setTimeout(res, 300));
    }
  }
}

function closeChat() {
  keepDraft();
  state.open = null;
  document.body.classList.remove('in-chat');
  $('conv-inner').hidden = true;
  $('empty').hidden = false;
  renderChats();
}

async function sendText() {
  const box = $('composer');
  const text = box.value;
  const peer = state.open;
  if (!text.trim() || !peer) return;
  try {
    const body = { peer, text };
    if (state.replyTo) body.reply_to = state.replyTo.id;
    const { message } = await postJson('/api/send', body);
    state.drafts.delete(peer);
    // (Another chat may be open by now: it keeps its own composer.)
    if (state.open === peer) {
      cancelReply();
      if (box.value === text) box.value = '';
      autoGrow();
      appendMessage(message, true);
    }
    loadChats();
  } catch (e) { $('conv-error').textContent = e.message; }
}

// An upload with its progress (fetch cannot report it; XHR can).
function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('POST', path);
    x.setRequestHeader('X-Ponte-Secret', secret || '');
    x.upload.onprogress = (ev) => { if (ev.lengthComputable) onProgress(ev.loaded, ev.total); };
    x.onload = () => {
      let body = {};
      try { body = JSON.parse(x.responseText); } catch (_) { /* not JSON */ }
      if (x.status === 200) resolve(body); else reject(new Error(body.error || x.statusText));
    };
    x.onerror = () => reject(new Error('the upload failed'));
    x.send(file);
  });
}

async function sendFile(file) {
  if (!state.open || !file) return;
  const peer = state.open;
  const q = new URLSearchParams({ peer, name: file.name || 'file', caption: '' });
  // A file sent while replying quotes the message, as a text would.
  if (state.replyTo) { q.set('reply_to', state.replyTo.id); cancelReply(); }
  $('conv-error').textContent = '';
  const bar = $('upload');
  bar.hidden = false;
  bar.querySelector('span').textContent = file.name;
  const meter = bar.querySelector('progress');
  meter.value = 0;
  try {
    const { message } = await upload(`/api/send-file?${q}`, file, (done, total) => { meter.value = done / total; });
    if (message.file && isImage(message.file)) state.localImages.set(message.id, URL.createObjectURL(file));
    if (state.open === peer) appendMessage(message, true);
    loadChats();
  } catch (e) { $('conv-error').textContent = e.message; }
  bar.hidden = true;
}

function autoGrow() {
  const t = $('composer');
  t.style.height = 'auto';
  t.style.height = Math.min(t.scrollHeight, 160) + 'px';
}

// ------------------------------------------------------------------ panels

function openPanel(which, title) {
  $('panel').hidden = false;
  $('panel-title').textContent = title;
  $('contact-panel').hidden = which !== 'contact';
  $('relays-panel').hidden = which !== 'relays';
  $('group-panel').hidden = which !== 'group';
  document.body.classList.add('in-panel');
}

function closePanel() {
  $('panel').hidden = true;
  document.body.classList.remove('in-panel');
}

function drawQr(target, qr) {
  const ns = 'http://www.w3.org/2000/svg';
  const n = qr.width;
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `-2 -2 ${n + 4} ${n + 4}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'Safety number QR code');
  const bg = document.createElementNS(ns, 'rect');
  bg.setAttribute('x', '-2'); bg.setAttribute('y', '-2');
  bg.setAttribute('width', String(n + 4)); bg.setAttribute('height', String(n + 4));
  bg.setAttribute('fill', '#fff');
  svg.append(bg);
  let d = '';
  for (let i = 0; i < qr.modules.length; i++) {
    if (qr.modules[i] === '1') d += `M${i % n} ${Math.floor(i / n)}h1v1h-1z`;
  }
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', d);
  path.setAttribute('fill', '#000');
  svg.append(path);
  target.replaceChildren(svg);
}

async function openContact(peer) {
  openPanel('contact', `Contact info: ${peer}`);
  $('sn-peer').textContent = peer;
  $('safety-number').textContent = '';
  $('qr').replaceChildren();
  try {
    const c = await getJson(`/api/contact/${encodeURIComponent(peer)}`);
    $('safety-number').textContent = c.safety_number;
    drawQr($('qr'), c.qr);
    const pb = $('panel-banner');
    pb.hidden = !c.key_changed;
    pb.textContent = c.key_changed ? `${peer}'s security key has CHANGED: this number is for the new key. Compare it before marking it verified.` : '';
    $('verified-state').textContent = c.verified && !c.key_changed ? '✔ Verified' : 'Not verified';
    $('verify').hidden = c.verified && !c.key_changed;
    showTimerChoice(peer);
    $('verify').onclick = async () => {
      try {
        await postJson(`/api/contact/${encodeURIComponent(peer)}/verify`);
        await openContact(peer);
        if (state.open === peer) openChat(peer, undefined, true);
      } catch (e) { toast(e.message); }
    };
  } catch (e) {
    $('safety-number').textContent = e.message.includes('not') ? `No key known for ${peer} yet: it arrives with the first message either way.` : e.message;
    $('verify').hidden = true;
    $('verified-state').textContent = '';
  }
}

async function openRelays() {
  openPanel('relays', 'Connection and relays');
  $('relay-error').textContent = '';
  $('route-checks').replaceChildren();
  try {
    const { relays } = await getJson('/api/relays');
    const list = $('relay-list');
    list.replaceChildren();
    if (relays.length === 0) list.append(el('li', 'hint', 'No relays saved: the app goes directly to the server.'));
    for (const r of relays) {
      const li = el('li', 'relay');
      li.setAttribute('data-testid', 'relay');
      li.append(el('span', 'url', r.url));
      if (r.in_use) li.append(el('span', 'in-use', 'in use'));
      const rm = el('button', '', 'Remove');
      rm.type = 'button';
      rm.addEventListener('click', async () => {
        try { await postJson('/api/relays/remove', { url: r.url }); openRelays(); } catch (e) { $('relay-error').textContent = e.message; }
      });
      li.append(rm);
      list.append(li);
    }
  } catch (e) { $('relay-error').textContent = e.message; }
}

// ------------------------------------------------------------------ live

function onLive(ev) {
  switch (ev.type) {
    case 'state': applyState(ev); break;
    case 'message': {
      const m = ev.message;
      if (m.chat === state.open && !state.jumped) {
        if (m.notice === 'group' && isGroup(m.chat)) refreshGroupHeader(m.chat);
        appendMessage(m, true);
        notify(m);
        markRead().then(loadChats);
      } else {
        notify(m);
        loadChats();
      }
      break;
    }
    case 'status':
      if (ev.message.chat === state.open) updateMessage(ev.message);
      loadChats();
      break;
    case 'file':
      if (state.open) {
        const node = state.messages.get(ev.id);
        if (node) openChat(state.open, undefined, true);
      }
      break;
    case 'warning': toast(ev.text); break;
    case 'resync': if (state.open) openChat(state.open, undefined, true); loadChats(); break;
    default: break;
  }
}

function notify(m) {
  if (!document.hidden || !('Notification' in window) || Notification.permission !== 'granted') return;
  const where = m.group ? `${m.peer} in ${m.group_title || 'a group'}` : m.peer;
  try { new Notification(`Ponte: ${where}`, { body: m.file ? m.file.name : (m.text || '').slice(0, 120) }); } catch (_) { /* not allowed */ }
}

async function live() {
  let wait = 500;
  for (;;) {
    try {
      const r = await api('POST', '/api/events', {});
      wait = 500;
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
          if (data) {
            try { onLive(JSON.parse(data)); } catch (e) { console.error(e); }
          }
        }
      }
    } catch (e) {
      if (e.message && e.message.includes('secret')) { show('gate'); return; }
    }
    const r = $('route-status');
    r.textContent = 'app stopped?';
    r.dataset.state = 'offline';
    await new Promise((res) => setTimeout(res, wait));
    wait = Math.min(wait * 2, 10000);
  }
}

// ------------------------------------------------------------------ wiring

function wire() {
  $('setup-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const btn = ev.target.querySelector('button');
    btn.disabled = true;
    $('setup-error').textContent = '';
    try {
      const s = await postJson('/api/register', Object.fromEntries(f.entries()));
      applyState(s);
    } catch (e) { $('setup-error').textContent = e.message; }
    btn.disabled = false;
  });
  $('unlock-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    $('unlock-error').textContent = '';
    try { applyState(await postJson('/api/unlock', Object.fromEntries(f.entries()))); } catch (e) { $('unlock-error').textContent = e.message; }
  });
  $('search').addEventListener('input', () => { renderChats(); searchSoon(); });
  wireReplies();
  $('new-chat').addEventListener('click', () => {
    const f = $('new-chat-form');
    f.hidden = !f.hidden;
    if (!f.hidden) f.elements.peer.focus();
  });
  $('new-chat-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const peer = ev.target.elements.peer.value.trim().toLowerCase();
    if (!peer) return;
    ev.target.hidden = true;
    ev.target.reset();
    openChat(peer);
  });
  $('composer-form').addEventListener('submit', (ev) => { ev.preventDefault(); sendText(); });
  $('composer').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendText(); }
  });
  $('composer').addEventListener('input', autoGrow);
  $('attach').addEventListener('click', () => $('file-input').click());
  $('file-input').addEventListener('change', (ev) => {
    for (const f of ev.target.files) sendFile(f);
    ev.target.value = '';
  });
  const conv = $('conv');
  conv.addEventListener('dragover', (ev) => { ev.preventDefault(); if (state.open) $('drop-hint').hidden = false; });
  conv.addEventListener('dragleave', () => { $('drop-hint').hidden = true; });
  conv.addEventListener('drop', (ev) => {
    ev.preventDefault();
    $('drop-hint').hidden = true;
    for (const f of ev.dataTransfer.files) sendFile(f);
  });
  $('messages').addEventListener('scroll', () => {
    const box = $('messages');
    const older = box.querySelector('.older');
    if (box.scrollTop < 80 && older && !older.dataset.loading) older.click();
  });
  $('back').addEventListener('click', closeChat);
  $('info').addEventListener('click', () => {
    if (!state.open) return;
    if (isGroup(state.open)) openGroup(state.open); else openContact(state.open);
  });
  wireGroups();
  $('route-status').addEventListener('click', openRelays);
  $('panel-close').addEventListener('click', closePanel);
  $('relay-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('relay-error').textContent = '';
    try { await postJson('/api/relays', { url: ev.target.elements.url.value }); ev.target.reset(); openRelays(); } catch (e) { $('relay-error').textContent = e.message; }
  });
  $('relay-check').addEventListener('click', async () => {
    const out = $('route-checks');
    out.replaceChildren(el('li', 'hint', 'checking…'));
    try {
      const s = await postJson('/api/relays/check');
      out.replaceChildren();
      for (const r of s.routes) out.append(el('li', r.error ? 'bad' : 'good', `${r.route}: ${r.error ? r.error : r.ms + ' ms'}`));
    } catch (e) { out.replaceChildren(el('li', 'bad', e.message)); }
  });
  $('retry').addEventListener('click', () => postJson('/api/retry').catch((e) => toast(e.message)));
  // Browser notifications: only if the user asks for them.
  if ('Notification' in window && Notification.permission === 'default') {
    $('notify-row').hidden = false;
    $('notify').addEventListener('click', async () => {
      try { await Notification.requestPermission(); } catch (_) { /* refused */ }
      $('notify-row').hidden = true;
    });
  }
  document.addEventListener('visibilitychange', () => { if (!document.hidden) markRead(); });
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') {
      if (state.replyTo) cancelReply();
      else if (!$('panel').hidden) closePanel();
      else if (state.open) closeChat();
    }
  });
}

async function start() {
  wire();
  if (!secret) { show('gate'); return; }
  try {
    applyState(await getJson('/api/state'));
  } catch (e) {
    show('gate');
    return;
  }
  live();
}

// The other scripts (groups.js, …) load after this one; all of them
// have run by DOMContentLoaded.
document.addEventListener('DOMContentLoaded', start);
