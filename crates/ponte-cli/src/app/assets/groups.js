// Groups and disappearing timers in the page: the new-group form, the
// group info panel, sender names and group ticks, notices, the timer in
// the conversation header and its setting in contact info. Loaded after
// app.js (shares its helpers: $, el, api, getJson, postJson, state…).
'use strict';

const isGroup = (peer) => typeof peer === 'string' && peer.startsWith('g:');

function groupIcon() {
  const i = el('img', 'group-icon');
  i.src = '/group.svg';
  i.alt = 'group: ';
  i.width = 16;
  i.height = 16;
  return i;
}

function chatName(c) {
  return c.group ? (c.title || 'group') : c.peer;
}

// An outgoing group message's tick follows its recipients: read once all
// read it, delivered once all have it.
function shownStatus(m) {
  const t = m.ticks;
  if (!m.outgoing || !t || t.of === 0 || !['sent', 'delivered', 'read'].includes(m.status)) return m.status;
  if (t.read_by >= t.of) return 'read';
  if (t.delivered_to >= t.of) return 'delivered';
  return 'sent';
}

// A stable colour per sender name (the same name, the same colour).
function senderColour(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return `hsl(${h}, 55%, 42%)`;
}

function timerLabel(secs) {
  if (!secs) return 'off';
  const units = [[604800, 'w'], [86400, 'd'], [3600, 'h'], [60, 'min'], [1, 's']];
  for (const [n, u] of units) if (secs % n === 0) return `${secs / n} ${u}`;
  return `${secs} s`;
}

function noticeText(m) {
  if (m.notice === 'timer') {
    const who = m.outgoing ? 'You' : m.peer;
    return m.notice_timer ? `${who} set disappearing messages to ${timerLabel(m.notice_timer)}` : `${who} turned disappearing messages off`;
  }
  return m.text;
}

function noticeNode(m) {
  const row = el('div', 'notice', noticeText(m));
  row.setAttribute('data-testid', 'notice');
  row.dataset.id = m.id;
  return row;
}

// The timer in the conversation header.
function renderTimer(secs) {
  const t = $('conv-timer');
  t.hidden = !secs;
  t.textContent = secs ? `⏱ ${timerLabel(secs)}` : '';
  t.title = secs ? `Messages disappear ${timerLabel(secs)} after they are read` : '';
  t.dataset.secs = String(secs || 0);
}

// The timer choice: in contact info for a 1:1 conversation, in group
// info for a group (any member may set it, as with `ponte timer g:…`).
const TIMER_CHOICES = [0, 30, 300, 3600, 86400, 604800];

async function showTimerChoice(peer, ids = { row: 'timer-row', select: 'timer-select', error: 'timer-error' }) {
  const sel = $(ids.select);
  sel.replaceChildren(...TIMER_CHOICES.map((secs) => {
    const o = el('option', '', timerLabel(secs));
    o.value = secs ? `${secs}s` : 'off';
    return o;
  }));
  // Not choosable until it shows the conversation's timer and its change
  // handler is set: a choice made before would be lost.
  sel.disabled = true;
  sel.onchange = null;
  $(ids.row).hidden = false;
  try {
    const page = await getJson(`/api/chat/${encodeURIComponent(peer)}?before=0`);
    const secs = page.timer || 0;
    const value = secs ? `${secs}s` : 'off';
    if (![...sel.options].some((o) => o.value === value)) {
      const o = el('option', '', timerLabel(secs));
      o.value = value;
      sel.append(o);
    }
    sel.value = value;
  } catch (_) { sel.value = 'off'; }
  sel.onchange = async () => {
    $(ids.error).textContent = '';
    try {
      const r = await postJson('/api/timer', { peer, timer: sel.value });
      if (peer.startsWith('g:')) $('group-timer').textContent = `Disappearing messages: ${timerLabel(r.timer)}`;
      if (state.open === peer) { renderTimer(r.timer); openChat(peer, undefined, true); }
    } catch (e) { $(ids.error).textContent = e.message; }
  };
  sel.disabled = false;
}

async function refreshGroupHeader(peer) {
  try {
    const g = await getJson(`/api/group/${encodeURIComponent(peer.slice(2))}`);
    if (state.open !== peer) return;
    $('peer-name').textContent = g.title;
    renderTimer(g.timer);
    $('composer').disabled = g.status !== 'member';
    if (!$('panel').hidden && !$('group-panel').hidden) openGroup(peer);
  } catch (e) { toast(e.message); }
}

// The group info panel: members, admins, your role; add and remove for
// admins; leave.
async function openGroup(peer) {
  openPanel('group', 'Group info');
  $('group-error').textContent = '';
  const list = $('group-members');
  list.replaceChildren();
  let g;
  try {
    g = await getJson(`/api/group/${encodeURIComponent(peer.slice(2))}`);
  } catch (e) { $('group-error').textContent = e.message; return; }
  $('group-title').textContent = g.title;
  const role = g.status !== 'member' ? `You are no longer a member (${g.status}).` : (g.role === 'admin' ? 'You are an admin.' : 'You are a member.');
  $('group-role').textContent = role;
  $('group-role').dataset.role = g.role || '';
  $('group-timer').textContent = `Disappearing messages: ${timerLabel(g.timer)}`;
  const admin = g.role === 'admin' && g.status === 'member';
  for (const m of g.members) {
    const li = el('li', 'member');
    li.setAttribute('data-testid', 'group-member');
    li.dataset.handle = m.handle;
    li.dataset.admin = m.admin ? '1' : '';
    li.append(el('span', 'handle', m.handle === g.me ? `${m.handle} (you)` : m.handle));
    if (m.admin) li.append(el('span', 'admin', 'admin'));
    if (admin && !m.admin) {
      const up = el('button', '', 'Make admin');
      up.type = 'button';
      up.setAttribute('data-testid', 'group-promote');
      up.addEventListener('click', () => groupChange(peer, 'promote', { member: m.handle }, up));
      li.append(up);
    }
    if (admin && m.handle !== g.me) {
      const rm = el('button', '', 'Remove');
      rm.type = 'button';
      rm.setAttribute('data-testid', 'group-remove');
      rm.addEventListener('click', () => groupChange(peer, 'remove', { member: m.handle }, rm));
      li.append(rm);
    }
    list.append(li);
  }
  $('group-timer-row').hidden = true;
  if (g.status === 'member') showTimerChoice(peer, { row: 'group-timer-row', select: 'group-timer-select', error: 'group-error' });
  $('group-add-form').hidden = !admin;
  $('group-rename-form').hidden = !admin;
  $('group-rename-form').onsubmit = (ev) => {
    ev.preventDefault();
    const title = ev.target.elements.title.value.trim();
    if (title) groupChange(peer, 'rename', { title }, ev.target.querySelector('button'));
  };
  $('group-leave').hidden = g.status !== 'member';
  $('group-leave').onclick = () => groupChange(peer, 'leave', {}, $('group-leave'));
  $('group-add-form').onsubmit = (ev) => {
    ev.preventDefault();
    const members = ev.target.elements.members.value.split(/[\s,]+/).filter(Boolean);
    groupChange(peer, 'add', { members }, ev.target.querySelector('button'));
  };
}

async function groupChange(peer, what, body, button) {
  $('group-error').textContent = '';
  if (button) button.disabled = true;
  try {
    await postJson(`/api/group/${encodeURIComponent(peer.slice(2))}/${what}`, body);
    // Only the form that was used: what is being typed in the other stays.
    if (what === 'add') $('group-add-form').reset();
    if (what === 'rename') $('group-rename-form').reset();
    await openGroup(peer);
    if (state.open === peer) openChat(peer, undefined, true);
    loadChats();
  } catch (e) { $('group-error').textContent = e.message; }
  if (button) button.disabled = false;
}

// "New group": a title and members picked from contacts (or typed).
function openNewGroup() {
  const f = $('new-group-form');
  f.hidden = !f.hidden;
  if (f.hidden) return;
  $('new-chat-form').hidden = true;
  $('new-group-error').textContent = '';
  const box = $('new-group-contacts');
  box.replaceChildren();
  const contacts = state.chats.filter((c) => !c.group).map((c) => c.peer);
  if (contacts.length === 0) box.append(el('p', 'hint', 'No contacts yet: type their handles below.'));
  for (const h of contacts) {
    const label = el('label', 'pick');
    const cb = el('input');
    cb.type = 'checkbox';
    cb.value = h;
    cb.setAttribute('data-testid', 'new-group-member');
    label.append(cb, ' ', h);
    box.append(label);
  }
  f.elements.title.focus();
}

async function createGroup(ev) {
  ev.preventDefault();
  const f = ev.target;
  const picked = [...f.querySelectorAll('[data-testid=new-group-member]:checked')].map((c) => c.value);
  const typed = f.elements.others.value.split(/[\s,]+/).filter(Boolean);
  const button = f.querySelector('button[type=submit]');
  button.disabled = true;
  $('new-group-error').textContent = '';
  try {
    const { group } = await postJson('/api/groups', { title: f.elements.title.value, members: [...picked, ...typed] });
    f.reset();
    f.hidden = true;
    await loadChats();
    openChat(group.peer);
  } catch (e) { $('new-group-error').textContent = e.message; }
  button.disabled = false;
}

function wireGroups() {
  $('new-group').addEventListener('click', openNewGroup);
  $('new-group-form').addEventListener('submit', createGroup);
}
