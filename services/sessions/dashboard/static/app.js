// browserfleet dashboard: fills the server-rendered pages from the public API.
// The credential (API key or dashboard sign-in) lives in sessionStorage only and travels as a
// Bearer header; it is never put in a URL.
'use strict';
(() => {
  const STORE = 'browserfleet.credential';
  const KIND = 'browserfleet.credential.kind'; // 'key' | 'link'
  const page = document.body.dataset.page;
  const $ = (id) => document.getElementById(id);

  const credential = () => sessionStorage.getItem(STORE);
  function signIn(value, kind) {
    sessionStorage.setItem(STORE, value);
    sessionStorage.setItem(KIND, kind);
    location.replace('/dashboard/usage');
  }
  function forget(reason) {
    sessionStorage.removeItem(STORE);
    sessionStorage.removeItem(KIND);
    location.replace('/dashboard/' + (reason ? '?reason=' + reason : ''));
  }
  async function endSignIn() {
    // A dashboard sign-in ends on the server (an API key only leaves this tab).
    if (!credential() || sessionStorage.getItem(KIND) !== 'link') return;
    try {
      await fetch('/v1/dashboard/sign-ins/current', { method: 'DELETE', credentials: 'omit',
        headers: { Authorization: 'Bearer ' + credential() } });
    } catch (_) { /* offline: it still expires */ }
  }
  async function signOut() {
    await endSignIn();
    forget();
  }

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(path, { method = 'GET', body, raw = false } = {}) {
    const headers = { Authorization: 'Bearer ' + credential() };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, { method, headers, cache: 'no-store', credentials: 'omit',
      body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 401) { forget('expired'); throw new ApiError(401, 'unauthorized', 'signed out'); }
    if (!res.ok) {
      let err = {};
      try { err = (await res.json()).error || {}; } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, err.code || 'error', err.message || res.statusText);
    }
    if (raw) return res;
    return res.status === 204 ? null : res.json();
  }

  function flash(message) {
    const box = $('flash');
    if (!box) return;
    box.textContent = message || '';
    box.hidden = !message;
  }
  const guarded = (fn) => async (...args) => {
    try { await fn(...args); } catch (e) { if (e.status !== 401) flash(e.message); }
  };

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') node.className = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  // --- formatting (money stays a decimal string from the server; no float math) -----------
  function money(amount) {
    if (amount === null || amount === undefined) return '—';
    let [whole, frac = ''] = String(amount).split('.');
    frac = frac.replace(/0+$/, '');  // the API writes 6 decimals ("0.010000"): show "$0.01", "$0.014"
    while (frac.length < 2) frac += '0';
    return '$' + whole + '.' + frac;
  }
  const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString(undefined,
    { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' }) : '—');
  const fmtDay = (iso) => new Date(iso).toLocaleDateString(undefined, { month: 'short', day: 'numeric', year: 'numeric' });
  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return '—';
    const s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const pad = (n) => String(n).padStart(2, '0');
    return h ? `${h}h ${pad(m)}m` : m ? `${m}m ${pad(r)}s` : `${r}s`;
  }
  const cap = (s) => (s ? s[0].toUpperCase() + s.slice(1).replace('_', ' ') : '');
  function fmtBytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
  }
  const badge = (status) => el('span', { class: `badge status-${status}` }, cap(status));

  // --- sign in -------------------------------------------------------------------------------
  function initSignIn() {
    const error = (msg) => { $('signin-error').textContent = msg; $('signin-error').hidden = !msg; };
    function useLink() {
      const link = new URLSearchParams(location.hash.slice(1)).get('link');
      if (!link) return false;
      history.replaceState(null, '', location.pathname); // the token leaves the address bar at once
      // A link someone else sent must not silently replace this tab's sign-in (login CSRF):
      // declined, the link stays unused and the tab as it was.
      if (credential() && !window.confirm('This link signs this tab in with another dashboard sign-in, '
          + 'replacing the current one. Continue only if you asked for this link.')) {
        location.replace('/dashboard/usage');
        return true;
      }
      fetch('/v1/dashboard/sign-ins', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ link }), credentials: 'omit' })
        .then(async (res) => {
          if (!res.ok) throw new Error('This dashboard link is invalid, used or has expired. Ask for a new one.');
          const body = await res.json();
          await endSignIn(); // the sign-in this one replaces, if any
          signIn(body.credential, 'link');
        })
        .catch((e) => error(e.message));
      return true;
    }
    window.addEventListener('hashchange', useLink); // a link pasted into a tab already on this page
    if (useLink()) return;
    if (credential()) { location.replace('/dashboard/usage'); return; }
    if (new URLSearchParams(location.search).get('reason') === 'expired') {
      error('You were signed out: the key was revoked or the sign-in expired.');
    }
    $('signin-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const input = $('api-key');
      const key = input.value.trim();
      input.value = '';
      const res = await fetch('/v1/usage', { headers: { Authorization: 'Bearer ' + key }, credentials: 'omit' });
      if (res.ok) signIn(key, 'key');
      else error(res.status === 401 ? 'That API key was not accepted.' : 'Sign-in failed, try again.');
    });
  }

  // --- usage -----------------------------------------------------------------------------------
  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const niceMax = (v) => { if (v <= 4) return 4; const p = 10 ** Math.floor(Math.log10(v)); return Math.ceil(v / p) * p; };

  function drawChart(days) {
    const W = 1000, H = 260, L = 44, R = 52, T = 12, B = 30, w = W - L - R, h = H - T - B;
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
    const maxS = niceMax(Math.max(0, ...days.map((d) => d.sessions)));
    const maxM = niceMax(Math.max(0, ...days.map((d) => d.minutes)));
    const slot = w / Math.max(days.length, 1);
    for (const f of [0, 0.5, 1]) {
      const y = T + h - f * h;
      root.append(svg('line', { x1: L, x2: L + w, y1: y, y2: y, class: 'axis' }));
      root.append(svg('text', { x: L - 8, y: y + 4, 'text-anchor': 'end' }, String(Math.round(f * maxS))));
      root.append(svg('text', { x: L + w + 8, y: y + 4 }, `${Math.round(f * maxM)} min`));
    }
    const every = Math.ceil(days.length / 10);
    const points = [];
    days.forEach((d, i) => {
      const x = L + i * slot, bh = (d.sessions / maxS) * h;
      const bw = Math.min(slot * 0.6, 28);
      const bar = svg('rect', { x: x + (slot - bw) / 2, y: T + h - bh, width: bw, height: bh, rx: 2, class: 'bar' });
      bar.append(svg('title', {}, `${d.date}: ${d.sessions} session${d.sessions === 1 ? '' : 's'}, ${d.minutes} min`));
      root.append(bar);
      points.push([x + slot / 2, T + h - (d.minutes / maxM) * h]);
      if (i % every === 0 || i === days.length - 1) {
        root.append(svg('text', { x: x + slot / 2, y: H - 10, 'text-anchor': 'middle' }, d.date.slice(5)));
      }
    });
    root.append(svg('polyline', { points: points.map((p) => p.join(',')).join(' '), class: 'line' }));
    for (const [x, y] of points) root.append(svg('circle', { cx: x, cy: y, r: 3, class: 'dot' }));
    $('chart').replaceChildren(root);
  }

  async function loadUsage() {
    const [u, d] = await Promise.all([api('/v1/usage'), api('/v1/usage/daily')]);
    $('u-plan').textContent = cap(u.plan);
    $('u-status').replaceChildren(badge(u.status));
    $('u-remaining').textContent = u.credits_remaining.toLocaleString('en-US');
    $('u-credits').textContent = `${u.credits_used.toLocaleString('en-US')} used of ${u.credits_granted.toLocaleString('en-US')} granted`;
    $('u-meter').style.width = u.credits_granted ? `${Math.min(100, (100 * u.credits_remaining) / u.credits_granted)}%` : '0';
    $('u-running').textContent = String(u.sessions_running);
    $('u-bill').textContent = money(d.bill_estimate);
    $('period').textContent = u.period_start ? `${fmtDay(u.period_start)} – ${fmtDay(u.period_end)}` : 'no active period';
    drawChart(d.days);
  }

  // --- sessions ----------------------------------------------------------------------------------
  function initSessions() {
    const pageSize = Number(new URLSearchParams(location.search).get('page_size')) || 20;
    const state = { cursors: [null], index: 0, next: null, sessions: [] };
    const thumbs = new Map(); // session id → object URL of its latest screenshot
    const loading = new Set();

    async function refreshThumb(id) {
      if (loading.has(id)) return;
      loading.add(id);
      try {
        const res = await api(`/v1/sessions/${id}/screenshot`, { raw: true });
        const url = URL.createObjectURL(await res.blob());
        const old = thumbs.get(id);
        thumbs.set(id, url);
        const img = document.querySelector(`img[data-thumb="${id}"]`);
        if (img) img.src = url;
        else { const box = document.querySelector(`[data-thumb-box="${id}"]`); if (box) box.replaceChildren(thumbImg(id)); }
        if (old) URL.revokeObjectURL(old);
      } catch (_) { /* no page yet, or it just ended: keep the last picture */ } finally { loading.delete(id); }
    }
    const thumbImg = (id) => el('img', { 'data-thumb': id, src: thumbs.get(id), alt: 'Live view of the session' });
    const opened = new Map(); // session id → its kept downloads (null while they load)

    // A session's downloads: kept when it ends, fetched with the credential (never a bare link).
    async function toggleDownloads(id) {
      if (opened.has(id)) { opened.delete(id); await load(); return; }
      opened.set(id, null);
      await load();
      try { opened.set(id, (await api(`/v1/sessions/${id}/downloads`)).data); } catch (e) { opened.delete(id); throw e; }
      await load();
    }
    async function saveDownload(id, name) {
      const res = await api(`/v1/sessions/${id}/downloads/${encodeURIComponent(name)}`, { raw: true });
      const url = URL.createObjectURL(await res.blob());
      const link = el('a', { href: url, download: name, hidden: '' });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    }
    function downloadsRow(id) {
      const files = opened.get(id);
      const content = files === null ? 'loading…'
        : !files.length ? el('span', { class: 'muted' }, 'No downloads kept for this session (they are kept for 24 h after it ends).')
          : el('ul', { class: 'downloads' }, ...files.map((f) => el('li', {},
            el('button', { type: 'button', class: 'link', 'data-download': f.name, onclick: guarded(() => saveDownload(id, f.name)) }, f.name),
            ' ', el('span', { class: 'muted small' }, fmtBytes(f.size_bytes)))));
      return el('tr', { class: 'downloads-row', 'data-downloads-for': id }, el('td', { colspan: '8' }, content));
    }

    function row(s) {
      const running = s.status === 'running';
      const duration = running && s.started_at ? Date.now() - Date.parse(s.started_at) : s.duration_ms;
      const end = running ? el('button', { type: 'button', class: 'danger', 'data-end': s.id, onclick: guarded(async (e) => {
        e.target.disabled = true;
        e.target.textContent = 'Ending…';
        await api(`/v1/sessions/${s.id}/end`, { method: 'POST' });
        await load();
      }) }, 'End') : s.status === 'completed' ? el('button', { type: 'button', 'data-downloads': s.id,
        onclick: guarded(() => toggleDownloads(s.id)) }, opened.has(s.id) ? 'Hide downloads' : 'Downloads') : '';
      const thumb = running ? el('div', { class: 'thumb', 'data-thumb-box': s.id }, thumbs.has(s.id) ? thumbImg(s.id) : 'loading…')
        : el('div', { class: 'thumb' }, s.status === 'completed' ? 'ended' : '—');
      return el('tr', { 'data-session': s.id, 'data-status': s.status },
        el('td', {}, thumb),
        el('td', { class: 'mono', title: s.id }, s.id.slice(0, 8)),
        el('td', {}, badge(s.status)),
        el('td', {}, fmtTime(s.created_at)),
        el('td', { class: 'duration' }, fmtDuration(duration)),
        el('td', { class: 'cost', title: running ? 'billed when the session ends' : '' }, running ? '—' : money(s.cost)),
        el('td', { class: 'reason' }, s.end_reason ? cap(s.end_reason) : '—'),
        el('td', {}, end));
    }

    async function load() {
      const params = new URLSearchParams({ limit: pageSize });
      const status = $('status-filter').value;
      if (status) params.set('status', status);
      const cursor = state.cursors[state.index];
      if (cursor) params.set('cursor', cursor);
      const body = await api('/v1/sessions?' + params);
      state.sessions = body.data;
      state.next = body.next_cursor;
      $('sessions-body').replaceChildren(...body.data.flatMap((s) => (opened.has(s.id) ? [row(s), downloadsRow(s.id)] : [row(s)])));
      $('sessions-empty').hidden = body.data.length > 0;
      $('prev-page').disabled = state.index === 0;
      $('next-page').disabled = !state.next;
      $('refreshed').textContent = 'updated ' + new Date().toLocaleTimeString();
      const live = new Set(body.data.filter((s) => s.status === 'running').map((s) => s.id));
      for (const [id, url] of thumbs) if (!live.has(id)) { URL.revokeObjectURL(url); thumbs.delete(id); }
      live.forEach((id) => { if (!thumbs.has(id)) refreshThumb(id); });
    }

    $('status-filter').addEventListener('change', guarded(async () => { state.cursors = [null]; state.index = 0; await load(); }));
    $('next-page').addEventListener('click', guarded(async () => {
      state.cursors = state.cursors.slice(0, state.index + 1).concat([state.next]);
      state.index += 1;
      await load();
    }));
    $('prev-page').addEventListener('click', guarded(async () => { state.index = Math.max(0, state.index - 1); await load(); }));
    guarded(load)();
    setInterval(guarded(load), 3000);
    setInterval(() => state.sessions.filter((s) => s.status === 'running').forEach((s) => refreshThumb(s.id)), 3000);
  }

  // --- profiles ------------------------------------------------------------------------------------
  function initProfiles() {
    const pageSize = Number(new URLSearchParams(location.search).get('page_size')) || 20;
    const state = { cursors: [null], index: 0, next: null };

    async function remove(p, button) {
      if (!button.classList.contains('confirm')) {  // the first click only asks
        button.classList.add('confirm');
        button.textContent = 'Confirm delete';
        setTimeout(() => { button.classList.remove('confirm'); button.textContent = 'Delete'; }, 5000);
        return;
      }
      button.disabled = true;
      flash('');
      try {
        await api(`/v1/profiles/${p.id}`, { method: 'DELETE' });
      } catch (e) {
        button.disabled = false;
        button.classList.remove('confirm');
        button.textContent = 'Delete';
        if (e.code !== 'profile_in_use') throw e;
        throw new Error(`"${p.name || p.id}" is in use by a running session that saves to it: `
          + 'end that session, then delete the profile.');
      }
      await load();
    }

    function row(p) {
      const used = p.last_session_id
        ? el('span', {}, fmtTime(p.updated_at), ' ', el('span', { class: 'muted small mono', title: p.last_session_id },
          'session ' + p.last_session_id.slice(0, 8)))
        : el('span', { class: 'muted' }, 'never');
      return el('tr', { 'data-profile': p.id },
        el('td', { class: 'name' }, p.name === null ? el('span', { class: 'muted' }, 'unnamed') : p.name),
        el('td', { class: 'mono', title: p.id }, p.id.slice(0, 8)),
        el('td', { class: 'size' }, fmtBytes(p.size_bytes)),
        el('td', {}, fmtTime(p.created_at)),
        el('td', { class: 'used' }, used),
        el('td', {}, el('button', { type: 'button', class: 'danger', 'data-delete': p.id,
          onclick: guarded((e) => remove(p, e.target)) }, 'Delete')));
    }

    async function load() {
      const params = new URLSearchParams({ limit: pageSize });
      const cursor = state.cursors[state.index];
      if (cursor) params.set('cursor', cursor);
      const body = await api('/v1/profiles?' + params);
      if (!body.data.length && state.index > 0) { state.index -= 1; await load(); return; } // its last one deleted
      state.next = body.next_cursor;
      $('profiles-body').replaceChildren(...body.data.map(row));
      $('profiles-empty').hidden = body.data.length > 0;
      $('profiles-prev').disabled = state.index === 0;
      $('profiles-next').disabled = !state.next;
      $('profiles-refreshed').textContent = 'updated ' + new Date().toLocaleTimeString();
    }

    $('profiles-next').addEventListener('click', guarded(async () => {
      state.cursors = state.cursors.slice(0, state.index + 1).concat([state.next]);
      state.index += 1;
      await load();
    }));
    $('profiles-prev').addEventListener('click', guarded(async () => { state.index = Math.max(0, state.index - 1); await load(); }));
    guarded(load)();
  }

  // --- API keys ------------------------------------------------------------------------------------
  function initKeys() {
    async function load() {
      const body = await api('/v1/api-keys');
      $('keys-body').replaceChildren(...body.data.map((k) => {
        const revoke = k.revoked_at ? '' : el('button', { type: 'button', class: 'danger', 'data-revoke': k.id,
          onclick: guarded(async (e) => {
            const button = e.target;
            if (!button.classList.contains('confirm')) {
              button.classList.add('confirm');
              button.textContent = 'Confirm revoke';
              setTimeout(() => { button.classList.remove('confirm'); button.textContent = 'Revoke'; }, 5000);
              return;
            }
            button.disabled = true;
            await api(`/v1/api-keys/${k.id}`, { method: 'DELETE' });
            if (k.current) forget('expired'); else await load();
          }) }, 'Revoke');
        return el('tr', { 'data-key': k.id },
          el('td', { class: 'mono' }, k.prefix + '…', k.current ? el('span', { class: 'badge in-use' }, 'in use here') : null),
          el('td', {}, fmtTime(k.created_at)),
          el('td', {}, k.last_used_at ? fmtTime(k.last_used_at) : 'never'),
          el('td', {}, badge(k.revoked_at ? 'revoked' : 'active')),
          el('td', {}, revoke));
      }));
    }
    async function loadSignIns() {
      const body = await api('/v1/dashboard/sign-ins');
      $('sign-ins-empty').hidden = body.data.length > 0;
      $('sign-ins-body').replaceChildren(...body.data.map((s) => {
        const end = el('button', { type: 'button', class: 'danger', 'data-end-sign-in': s.id,
          onclick: guarded(async (e) => {
            e.target.disabled = true;
            await api(`/v1/dashboard/sign-ins/${s.id}`, { method: 'DELETE' });
            if (s.current) forget(); else await loadSignIns();
          }) }, s.current ? 'Sign out' : 'End');
        return el('tr', { 'data-sign-in': s.id },
          el('td', {}, fmtTime(s.created_at), s.current ? el('span', { class: 'badge in-use' }, 'this tab') : null),
          el('td', {}, s.last_used_at ? fmtTime(s.last_used_at) : '—'),
          el('td', {}, fmtTime(s.expires_at)),
          el('td', {}, end));
      }));
    }
    $('create-key').addEventListener('click', guarded(async () => {
      const created = await api('/v1/api-keys', { method: 'POST' });
      $('new-key-secret').textContent = created.api_key;
      $('new-key').hidden = false;
      await load();
    }));
    $('copy-key').addEventListener('click', () => copy($('new-key-secret').textContent, $('copy-key')));
    guarded(load)();
    guarded(loadSignIns)();
  }

  async function copy(text, button) {
    try { await navigator.clipboard.writeText(text); button.textContent = 'Copied'; } catch (_) { button.textContent = 'Copy failed: select the text'; }
    setTimeout(() => { button.textContent = button.dataset.label || 'Copy'; }, 2000);
  }

  // --- quick start -------------------------------------------------------------------------------
  function initQuickstart() {
    const key = credential();
    const button = $('copy-export');
    button.dataset.label = button.textContent;
    if (sessionStorage.getItem(KIND) === 'key') {
      $('qs-key').textContent = key.slice(0, 12) + '…';
      $('qs-key-note').textContent = 'The key you signed in with (hidden here; the button copies all of it).';
      button.addEventListener('click', () => copy(`export BROWSERFLEET_API_KEY=${key}`, button));
    } else {
      $('qs-key').textContent = '<your API key>';
      $('qs-key-note').textContent = 'You signed in with a dashboard link: create a key on the API keys page.';
      button.disabled = true;
    }
  }

  // --- boot ----------------------------------------------------------------------------------------
  if (page === 'signin') { initSignIn(); return; }
  if (!credential()) { location.replace('/dashboard/'); return; }
  document.querySelector(`[data-nav="${page}"]`)?.classList.add('active');
  $('sign-out').addEventListener('click', () => signOut());
  api('/v1/usage').then((u) => { $('plan-badge').textContent = cap(u.plan); }).catch(() => {});
  if (page === 'usage') { guarded(loadUsage)(); setInterval(guarded(loadUsage), 5000); }
  if (page === 'sessions') initSessions();
  if (page === 'profiles') initProfiles();
  if (page === 'keys') initKeys();
  if (page === 'quickstart') initQuickstart();
})();
