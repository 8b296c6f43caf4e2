// Replies and search in the page: the quote above a reply (a click
// scrolls to the original when it is loaded), "reply" on hover or with
// the R key on a focused message, the reply bar over the composer; the
// search box's message results, each opening its chat at the message.
// Loaded after app.js (shares its helpers).
'use strict';

function quoteNode(q) {
  const box = el('div', 'quote');
  box.setAttribute('data-testid', 'quote');
  box.dataset.replyTo = q.id;
  if (q.missing) {
    box.append(el('span', 'quote-text', 'A message that is not here (deleted, or not received)'));
    return box;
  }
  box.append(el('span', 'quote-who', q.outgoing ? 'You' : q.peer));
  box.append(el('span', 'quote-text', q.file ? `📎 ${q.file}${q.text ? ' — ' + q.text : ''}` : q.text));
  box.tabIndex = 0;
  box.title = 'Show the original message';
  const go = () => {
    if (!highlight(q.id)) toast('The original message is further up: scroll up to load earlier messages.');
  };
  box.addEventListener('click', go);
  box.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') go(); });
  return box;
}

// Scroll the message `id` into view and flash it; false if not loaded.
function highlight(id) {
  const node = state.messages.get(id);
  if (!node) return false;
  node.scrollIntoView({ block: 'center' });
  node.classList.remove('hit');
  void node.offsetWidth; // restart the animation
  node.classList.add('hit');
  node.dataset.highlighted = '1';
  return true;
}

function addReplyButton(row, m) {
  const b = el('button', 'reply-button', '↩');
  b.type = 'button';
  b.title = 'Reply (R)';
  b.setAttribute('aria-label', 'Reply');
  b.setAttribute('data-testid', 'reply');
  b.addEventListener('click', (ev) => { ev.stopPropagation(); startReply(m); });
  row.append(b);
  row.tabIndex = 0;
  row.addEventListener('keydown', (ev) => {
    if ((ev.key === 'r' || ev.key === 'R') && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
      ev.preventDefault();
      startReply(m);
    }
  });
}

function startReply(m) {
  // Not in a group this device has left or was removed from.
  if ($('composer').disabled) return;
  state.replyTo = m;
  const bar = $('reply-bar');
  bar.hidden = false;
  $('reply-who').textContent = m.outgoing ? 'You' : m.peer;
  $('reply-text').textContent = m.file ? `📎 ${m.file.name}` : (m.text || '').slice(0, 200);
  bar.dataset.replyTo = m.id;
  $('composer').focus();
}

function cancelReply() {
  state.replyTo = null;
  const bar = $('reply-bar');
  if (bar) { bar.hidden = true; bar.dataset.replyTo = ''; }
}

// After a jump to a search hit, the newest messages are a click away.
function newestButton(peer) {
  const b = el('button', 'older', 'Go to the newest messages ↓');
  b.type = 'button';
  b.setAttribute('data-testid', 'newest');
  b.addEventListener('click', () => openChat(peer));
  return b;
}

// ------------------------------------------------------------------ search

let searchTimer = null;
let searchAsked = 0;

function searchSoon() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 250);
}

async function runSearch() {
  const q = $('search').value.trim();
  const list = $('search-results');
  const asked = ++searchAsked;
  if (!/[\p{L}\p{N}]/u.test(q)) {
    list.replaceChildren();
    list.hidden = true;
    return;
  }
  try {
    const { hits } = await getJson(`/api/search?q=${encodeURIComponent(q)}`);
    if (asked !== searchAsked) return;
    list.replaceChildren(el('li', 'results-title', hits.length ? 'Messages' : 'No messages found'));
    for (const h of hits) list.append(resultNode(h));
    list.hidden = false;
  } catch (e) {
    if (asked !== searchAsked) return;
    list.replaceChildren(el('li', 'hint', e.message));
    list.hidden = false;
  }
}

function resultNode(h) {
  const m = h.message;
  const li = el('li', 'chat result');
  li.setAttribute('data-testid', 'search-result');
  li.dataset.chat = h.chat;
  li.dataset.id = m.id;
  li.tabIndex = 0;
  const top = el('div', 'row');
  const name = el('span', 'name', h.title || h.chat);
  if (h.title) name.prepend(groupIcon());
  top.append(name, el('span', 'time', timeLabel(m.sent_at)));
  const who = m.outgoing ? 'You: ' : (m.group ? `${m.peer}: ` : '');
  const bottom = el('div', 'row');
  bottom.append(el('span', 'preview', who + (m.file ? `📎 ${m.file.name} ${m.text}` : m.text)));
  li.append(top, bottom);
  const open = () => openChat(h.chat, { seq: h.seq, id: m.id });
  li.addEventListener('click', open);
  li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') open(); });
  return li;
}

function wireReplies() {
  $('reply-cancel').addEventListener('click', cancelReply);
}
