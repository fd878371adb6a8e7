// The webhook_relay console: polls api/relays every few seconds, pauses and
// resumes a relay's destinations, searches a relay's events (its history)
// and shows one with its attempts, resends it, lists a relay's dead letters,
// shows one, and replays or deletes them. Every value
// from the server is put in the page as text, never as HTML.
'use strict';

(() => {
	const REFRESH_MS = 3000;
	const RATE_WINDOW_MS = 60000; // rates are averaged over the last minute
	const PAGE = 1000; // dead letters asked for at once (the API's maximum)
	const MAX_LOADED = 5000; // dead letters the page keeps in memory
	const SHOWN_CHARS = 200; // longer strings in a body are cut when pretty-printed
	const IMAGE_TYPES = /^data:image\/(png|jpeg|gif|webp|avif|bmp);base64,/i;
	const IMAGE_MAGIC = [['iVBORw0KGgo', 'image/png'], ['/9j/', 'image/jpeg'], ['R0lGOD', 'image/gif'], ['UklGR', 'image/webp']];

	const base = location.pathname.endsWith('/') ? location.pathname : location.pathname + '/';
	const $ = (id) => document.getElementById(id);

	const state = {
		now: Date.now(), // the server's clock at the last refresh
		skew: 0, // server clock minus ours
		relays: [],
		loaded: false, // the relays have been read once
		samples: new Map(), // relay name -> [{t, requests}]
		relay: '', // the relay whose dead letters are shown
		letterId: '', // the dead letter shown
		eventId: '', // the event shown
		events: [], // the events found, newest first
		eventsNext: '', // where the next (older) page starts
		eventsMore: false, // the operator asked for older pages: the refresh leaves the list alone
		dead: [],
		deadComplete: true,
		selected: new Set(),
		sort: { field: 'age', dir: 'desc' },
		busy: false,
	};

	// el builds an element: attrs are properties (or data-* attributes),
	// children are nodes or strings (as text).
	function el(tag, attrs, ...children) {
		const e = document.createElement(tag);
		for (const [k, v] of Object.entries(attrs || {})) {
			if (k.startsWith('data-') || k === 'title' || k === 'aria-label') e.setAttribute(k, v);
			else e[k] = v;
		}
		for (const c of children) e.append(c instanceof Node ? c : String(c));
		return e;
	}

	async function call(path, body) {
		const opts = { headers: { Accept: 'application/json' }, credentials: 'same-origin' };
		if (body !== undefined) {
			opts.method = 'POST';
			opts.headers['Content-Type'] = 'application/json';
			opts.body = JSON.stringify(body);
		}
		let resp;
		try {
			resp = await fetch(base + 'api/' + path, opts);
		} catch (e) {
			throw new Error('cannot reach the console (' + e.message + ')');
		}
		let data = null;
		try {
			data = await resp.json();
		} catch (e) {
			// not JSON: an error page in front of the console, e.g. basic_auth's 401
		}
		if (!resp.ok) {
			const why = data && data.error ? data.error : resp.statusText;
			const err = new Error(why + ' (HTTP ' + resp.status + ')');
			err.status = resp.status;
			throw err;
		}
		return data;
	}

	function show(id, on) { $(id).hidden = !on; }

	function problem(msg) {
		$('problem').textContent = msg || '';
		show('problem', !!msg);
	}

	let noticeTimer = 0;
	function notice(msg) {
		$('notice').textContent = msg;
		show('notice', true);
		clearTimeout(noticeTimer);
		noticeTimer = setTimeout(() => show('notice', false), 8000);
	}

	function plural(n, one, many) { return n + ' ' + (n === 1 ? one : many); }

	function age(ms) {
		if (!(ms >= 0)) return '–';
		let s = Math.floor(ms / 1000);
		if (s < 60) return s + 's';
		let m = Math.floor(s / 60);
		s %= 60;
		if (m < 60) return m + 'm ' + s + 's';
		let h = Math.floor(m / 60);
		m %= 60;
		if (h < 24) return h + 'h ' + m + 'm';
		return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
	}

	function since(iso) { return iso ? age(state.now - Date.parse(iso)) : '–'; }

	function when(iso) {
		return new Date(iso).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') + ' (' + since(iso) + ' ago)';
	}

	function bytes(n) {
		if (n < 1024) return plural(n, 'byte', 'bytes');
		if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
		return (n / (1 << 20)).toFixed(1) + ' MiB';
	}

	function rate(name, outcome) {
		const s = state.samples.get(name);
		if (!s || s.length < 2) return '–';
		const first = s[0], last = s[s.length - 1];
		const dt = (last.t - first.t) / 1000;
		if (dt <= 0) return '–';
		const r = ((last.requests[outcome] || 0) - (first.requests[outcome] || 0)) / dt;
		if (r === 0) return '0/s';
		return (r < 10 ? r.toFixed(2) : r.toFixed(0)) + '/s';
	}

	function addSample(relay) {
		let s = state.samples.get(relay.name) || [];
		const sample = { t: state.now, requests: relay.requests || {} };
		const prev = s[s.length - 1];
		if (prev && (sample.requests.accepted || 0) < (prev.requests.accepted || 0)) s = []; // counters restarted
		s.push(sample);
		while (s.length > 2 && s[0].t < state.now - RATE_WINDOW_MS) s.shift();
		state.samples.set(relay.name, s);
	}

	// ---- routing: #relay=<name>[&id=<dead letter id> | &event=<event id>]

	function route() {
		const p = new URLSearchParams(location.hash.slice(1));
		return { relay: p.get('relay') || '', id: p.get('id') || '', event: p.get('event') || '' };
	}

	function href(relay, id, event) {
		const p = new URLSearchParams();
		if (relay) p.set('relay', relay);
		if (id) p.set('id', id);
		if (event) p.set('event', event);
		return '#' + p.toString();
	}

	async function onRoute() {
		const r = route();
		if (r.relay !== state.relay) {
			state.relay = r.relay;
			state.dead = [];
			state.selected.clear();
			$('filter-key').value = '';
			$('filter-status').value = '';
			$('events-key').value = '';
			$('events-state').value = '';
			$('events-destination').value = '';
			state.events = [];
			state.eventsMore = false;
		}
		state.letterId = r.id;
		state.eventId = r.event;
		const relayPage = !!r.relay && !r.id && !r.event;
		show('dead-section', relayPage);
		show('destinations-section', relayPage);
		show('events-section', relayPage);
		show('letter-section', !!r.id);
		show('event-section', !!r.event && !r.id);
		renderRelays();
		renderDestinations();
		if (r.id) await loadLetter(r.relay, r.id);
		else if (r.event) await loadEvent(r.relay, r.event);
		else if (r.relay) await Promise.all([loadEvents(false), loadDead()]);
	}

	// ---- relays

	async function refresh() {
		try {
			const data = await call('relays');
			state.now = Date.parse(data.now);
			state.skew = state.now - Date.now();
			state.relays = data.relays || [];
			state.loaded = true;
			for (const r of state.relays) addSample(r);
			renderRelays();
			renderDestinations();
			problem('');
			$('updated').textContent = 'updated ' + new Date(state.now).toLocaleTimeString();
			if (state.relay && !state.letterId && !state.eventId && !state.busy) {
				await Promise.all([state.eventsMore ? null : loadEvents(false), loadDead()]);
			}
		} catch (e) {
			problem(e.message + '; retrying every ' + REFRESH_MS / 1000 + ' s');
		}
		setTimeout(refresh, REFRESH_MS);
	}

	function renderRelays() {
		const body = $('relays').tBodies[0];
		const rows = state.relays.map((r) => {
			const oldest = r.oldest_queued ? age(state.now - Date.parse(r.oldest_queued)) : '–';
			const tr = el('tr', { className: 'relay' + (r.name === state.relay ? ' selected' : ''), 'data-relay': r.name },
				el('td', { className: 'name' }, el('a', { href: href(r.name) }, r.name),
					...((r.destinations || []).some((d) => d.paused)
						? [el('span', { className: 'badge paused', title: pausedText(r) }, 'paused')] : [])),
				el('td', { className: 'upstream' }, r.upstream_host || '–'),
				el('td', { className: 'num backlog' }, r.error ? '?' : r.backlog),
				el('td', { className: 'num in-flight' }, r.in_flight),
				el('td', { className: 'num dead' + (r.dead_letters > 0 ? ' warn' : '') }, r.error ? '?' : r.dead_letters),
				el('td', { className: 'num oldest' }, oldest),
				el('td', { className: 'num rate-accepted' }, rate(r.name, 'accepted')),
				el('td', { className: 'num rate-duplicate' }, rate(r.name, 'duplicate')),
				el('td', { className: 'num rate-unauthorized' }, rate(r.name, 'unauthorized')),
				el('td', { className: 'num rate-ignored' }, rate(r.name, 'ignored')),
				el('td', { className: 'num rate-challenge' }, rate(r.name, 'challenge')));
			if (r.error) tr.title = r.error;
			tr.addEventListener('click', (ev) => {
				if (ev.target.tagName !== 'A') location.hash = href(r.name);
			});
			return tr;
		});
		body.replaceChildren(...rows);
		show('no-relays', state.loaded && state.relays.length === 0);
		const broken = state.relays.filter((r) => r.error);
		if (broken.length) problem(broken.map((r) => r.name + ': ' + r.error).join('; '));
	}

	function pausedText(r) {
		const paused = (r.destinations || []).filter((d) => d.paused).map((d) => d.name);
		return 'paused: ' + paused.join(', ') + '; payloads are accepted and wait';
	}

	// ---- destinations of one relay: their state, pause and resume

	function renderDestinations() {
		const r = state.relays.find((x) => x.name === state.relay);
		$('destinations-title').textContent = 'Destinations of ' + state.relay;
		const dests = r ? r.destinations || [] : [];
		const select = $('events-destination');
		const chosen = select.value;
		select.replaceChildren(el('option', { value: '' }, 'any'), ...dests.map((d) => el('option', { value: d.name }, d.name)));
		select.value = dests.some((d) => d.name === chosen) ? chosen : '';
		$('destinations').tBodies[0].replaceChildren(...dests.map((d) => {
			const verb = d.paused ? 'resume' : 'pause';
			const button = el('button', { type: 'button', className: verb, 'aria-label': verb + ' ' + d.name }, d.paused ? 'Resume' : 'Pause');
			button.addEventListener('click', () => setPaused(state.relay, d.name, verb, button));
			return el('tr', { className: 'destination', 'data-destination': d.name },
				el('td', { className: 'name' }, d.name),
				el('td', { className: 'host' }, d.upstream_host || '–'),
				el('td', { className: 'state' + (d.paused ? ' paused' : '') }, d.paused ? 'paused' : 'delivering'),
				el('td', { className: 'num backlog' }, String(d.backlog || 0)),
				el('td', {}, button));
		}));
	}

	async function setPaused(relay, destination, verb, button) {
		button.disabled = true;
		try {
			const res = await call(verb, { relay, destination });
			const r = state.relays.find((x) => x.name === relay);
			if (r) r.destinations = res.destinations || [];
			notice((verb === 'pause' ? 'Paused ' : 'Resumed ') + destination + ' of ' + relay + '.' +
				(verb === 'pause' ? ' Payloads are accepted and wait until it is resumed.' : ''));
			renderRelays();
			renderDestinations();
		} catch (e) {
			problem(verb + ': ' + e.message);
			button.disabled = false;
		}
	}

	// ---- events of one relay: its history, searched on the server

	async function loadEvents(older) {
		const relay = state.relay;
		const q = new URLSearchParams({ relay, limit: '50' });
		for (const [name, id] of [['key', 'events-key'], ['state', 'events-state'], ['destination', 'events-destination']]) {
			const v = $(id).value.trim();
			if (v) q.set(name, v);
		}
		if (older && state.eventsNext) q.set('after', state.eventsNext);
		try {
			const page = await call('events?' + q);
			if (relay !== state.relay) return;
			state.events = older ? state.events.concat(page.entries || []) : page.entries || [];
			state.eventsNext = page.next || '';
			renderEvents();
		} catch (e) {
			if (relay === state.relay) problem('events of ' + relay + ': ' + e.message);
		}
	}

	function stateCell(s) { return el('span', { className: 'state-' + s }, s); }

	function destinationsText(e) {
		return (e.destinations || []).map((d) => d.destination + ': ' + d.state +
			(d.attempts ? ' (' + plural(d.attempts, 'attempt', 'attempts') + ')' : '')).join(' · ');
	}

	function renderEvents() {
		$('events-title').textContent = 'Events of ' + state.relay;
		$('events').tBodies[0].replaceChildren(...state.events.map((e) => {
			const last = e.attempts && e.attempts.length ? e.attempts[e.attempts.length - 1] : null;
			const tr = el('tr', { className: 'event', 'data-id': e.id, 'data-state': e.state },
				el('td', { className: 'id' }, el('a', { href: href(state.relay, '', e.id) }, e.id)),
				el('td', { className: 'num age', title: e.received }, since(e.received)),
				el('td', { className: 'state' }, stateCell(e.state)),
				el('td', { className: 'destinations' }, destinationsText(e)),
				el('td', { className: 'num status' }, last ? statusText(last.status) : '–'),
				el('td', { className: 'key' }, e.key));
			tr.addEventListener('click', (ev) => {
				if (ev.target.tagName !== 'A') location.hash = href(state.relay, '', e.id);
			});
			return tr;
		}));
		$('events-summary').textContent = state.events.length
			? plural(state.events.length, 'event', 'events') + ' shown, newest first'
			: 'No event matches (the history keeps payloads for the relay\'s history setting, 24h by default).';
		show('events-more', !!state.eventsNext);
	}

	// ---- one event: its destinations, attempts and body

	async function loadEvent(relay, id) {
		$('event-title').textContent = 'Event ' + id;
		$('event-back').href = href(relay);
		for (const part of ['event-fields', 'event-request', 'event-thumbs', 'event-body', 'event-attempts']) $(part).replaceChildren();
		$('event-destinations').tBodies[0].replaceChildren();
		$('event-raw').open = false;
		$('event-raw').querySelector('pre').replaceChildren();
		show('event-images', false);
		$('event-body-note').textContent = '';
		let d;
		try {
			d = await call('event?' + new URLSearchParams({ relay, id }));
		} catch (e) {
			problem(e.status === 404 ? 'event ' + id + ' of ' + relay + ' is not in its history (unknown, or its history ran out)' : e.message);
			return;
		}
		if (state.eventId !== id) return;
		fields($('event-fields'), [
			['Relay', relay],
			['Key', d.key],
			['State', stateCell(d.state)],
			['Received', when(d.received)],
			['Done', d.done ? when(d.done) : '–'],
			['Body size', bytes(d.body_size)],
		]);
		$('event-destinations').tBodies[0].replaceChildren(...(d.destinations || []).map((x) =>
			el('tr', { className: 'delivery', 'data-destination': x.destination },
				el('td', {}, x.destination),
				el('td', { className: 'state' }, stateCell(x.state)),
				el('td', { className: 'num' }, x.attempts),
				el('td', {}, x.done ? when(x.done) : '–'))));
		const items = (d.attempts || []).map((a) => {
			const ok = a.status >= 200 && a.status < 300;
			return el('li', { className: 'attempt ' + (ok ? 'ok' : 'failed') },
				el('span', { className: 'when', title: a.at }, when(a.at)),
				el('strong', {}, a.destination), ' → ', el('span', { className: 'status' }, statusText(a.status)),
				' in ' + a.duration_ms + ' ms',
				...(a.error ? [el('span', { className: 'error' }, a.error)] : []));
		});
		if (d.attempts_left_out) {
			items.splice(1, 0, el('li', { className: 'left-out muted' }, plural(d.attempts_left_out, 'attempt', 'attempts') + ' not kept'));
		}
		if (!items.length) items.push(el('li', { className: 'muted' }, 'no attempt yet'));
		$('event-attempts').replaceChildren(...items);
		fields($('event-request'), requestFields(d.request));
		renderBody(d, EVENT_BODY);
		$('event-resend').disabled = !(d.destinations || []).some((x) => x.state === 'delivered');
	}

	async function resend() {
		const relay = state.relay, id = state.eventId;
		if (!await confirmAction('Resend event ' + id + ' of ' + relay + '? Every destination that has it delivered gets it again, ' +
			'with the same Idempotency-Key.', 'Resend')) return;
		try {
			const res = await call('resend', { relay, id });
			notice('Resent event ' + id + ' to ' + plural(res.resent, 'destination', 'destinations') + '.');
			await loadEvent(relay, id);
		} catch (e) {
			problem('resend: ' + e.message);
		}
	}

	// ---- dead letters of one relay

	async function loadDead() {
		const relay = state.relay;
		try {
			let entries = [], after = '', next = '';
			do {
				const q = new URLSearchParams({ relay, limit: String(PAGE) });
				if (after) q.set('after', after);
				const page = await call('dead?' + q);
				entries = entries.concat(page.entries || []);
				next = page.next || '';
				after = next;
			} while (next && entries.length < MAX_LOADED);
			if (relay !== state.relay) return; // the operator moved on meanwhile
			state.dead = entries;
			state.deadComplete = !next;
			const ids = new Set(entries.map((e) => e.id));
			for (const id of state.selected) if (!ids.has(id)) state.selected.delete(id);
			renderDead();
		} catch (e) {
			if (relay === state.relay) problem('dead letters of ' + relay + ': ' + e.message);
		}
	}

	function shownDead() {
		const key = $('filter-key').value.trim().toLowerCase();
		const status = $('filter-status').value;
		const rows = state.dead.filter((e) =>
			(!key || e.key.toLowerCase().includes(key)) && (status === '' || String(e.last_status) === status));
		const dir = state.sort.dir === 'asc' ? 1 : -1;
		const value = state.sort.field === 'status' ? (e) => e.last_status : (e) => -Date.parse(e.received);
		rows.sort((a, b) => (value(a) - value(b)) * dir || (a.id < b.id ? -1 : 1));
		return rows;
	}

	function statusText(s) { return s ? String(s) : 'no answer'; }

	function renderDead() {
		$('dead-title').textContent = 'Dead letters of ' + state.relay;
		// the status filter offers the statuses present
		const select = $('filter-status');
		const statuses = [...new Set(state.dead.map((e) => e.last_status))].sort((a, b) => a - b);
		const current = select.value;
		select.replaceChildren(el('option', { value: '' }, 'any'),
			...statuses.map((s) => el('option', { value: String(s) }, statusText(s))));
		select.value = statuses.map(String).includes(current) ? current : '';

		for (const b of document.querySelectorAll('button.sort')) {
			if (b.dataset.sort === state.sort.field) b.dataset.dir = state.sort.dir;
			else delete b.dataset.dir;
		}

		const rows = shownDead();
		$('dead').tBodies[0].replaceChildren(...rows.map((e) => {
			const box = el('input', { type: 'checkbox', checked: state.selected.has(e.id), 'aria-label': 'select ' + e.id });
			box.addEventListener('change', () => {
				if (box.checked) state.selected.add(e.id);
				else state.selected.delete(e.id);
				renderSelection();
			});
			const tr = el('tr', { className: 'letter', 'data-id': e.id },
				el('td', {}, box),
				el('td', { className: 'id' }, el('a', { href: href(state.relay, e.id) }, e.id)),
				el('td', { className: 'destination' }, e.destination || '–'),
				el('td', { className: 'num age', title: e.received }, since(e.received)),
				el('td', { className: 'num attempts' }, e.attempts),
				el('td', { className: 'num status' }, statusText(e.last_status)),
				el('td', { className: 'error' }, e.last_error || ''),
				el('td', { className: 'key' }, e.key));
			tr.addEventListener('click', (ev) => {
				if (ev.target.tagName !== 'INPUT' && ev.target.tagName !== 'A') location.hash = href(state.relay, e.id);
			});
			return tr;
		}));

		let summary = rows.length === state.dead.length
			? plural(state.dead.length, 'dead letter', 'dead letters')
			: rows.length + ' of ' + plural(state.dead.length, 'dead letter', 'dead letters') + ' shown';
		if (!state.deadComplete) summary += ' (the first ' + state.dead.length + '; replay or delete some to see the rest)';
		$('dead-summary').textContent = summary;
		renderSelection();
	}

	function renderSelection() {
		const n = state.selected.size;
		$('replay-selected').textContent = n ? 'Replay selected (' + n + ')' : 'Replay selected';
		$('delete-selected').textContent = n ? 'Delete selected (' + n + ')' : 'Delete selected';
		$('replay-selected').disabled = $('delete-selected').disabled = n === 0;
		$('replay-all').disabled = $('delete-all').disabled = state.dead.length === 0;
		const shown = shownDead();
		const all = $('select-all');
		all.checked = shown.length > 0 && shown.every((e) => state.selected.has(e.id));
		all.indeterminate = !all.checked && shown.some((e) => state.selected.has(e.id));
	}

	// ---- one dead letter

	async function loadLetter(relay, id) {
		$('letter-title').textContent = 'Dead letter ' + id;
		$('letter-back').href = href(relay);
		for (const part of ['letter-fields', 'letter-request', 'thumbs', 'letter-body']) $(part).replaceChildren();
		$('letter-raw').open = false;
		$('letter-raw').querySelector('pre').replaceChildren();
		show('letter-images', false);
		$('letter-body-note').textContent = '';
		let d;
		try {
			d = await call('letter?' + new URLSearchParams({ relay, id }));
		} catch (e) {
			problem(e.status === 404 ? 'dead letter ' + id + ' of ' + relay + ' is gone (replayed or deleted)' : e.message);
			return;
		}
		if (state.letterId !== id) return;
		fields($('letter-fields'), [
			['Relay', relay],
			['Destination', d.destination || '–'],
			['Key', d.key],
			['Received', when(d.received)],
			['Died', d.died ? when(d.died) : '–'],
			['Attempts', d.attempts],
			['Last status', statusText(d.last_status)],
			['Last error', d.last_error || '–'],
			['Body size', bytes(d.body_size)],
		]);
		fields($('letter-request'), requestFields(d.request));
		renderBody(d, LETTER_BODY);
	}

	// where renderBody puts a body: the dead letter's page or the event's
	const LETTER_BODY = { body: 'letter-body', raw: 'letter-raw', note: 'letter-body-note', images: 'letter-images', thumbs: 'thumbs' };
	const EVENT_BODY = { body: 'event-body', raw: 'event-raw', note: 'event-body-note', images: 'event-images', thumbs: 'event-thumbs' };

	// requestFields are what a payload kept of its request, as fields.
	function requestFields(req) {
		req = req || {};
		return [
			['Content-Type', req.content_type || '–'],
			['User-Agent', req.user_agent || '–'],
			['X-Forwarded-For', req.forwarded_for || '–'],
			['Query', req.query ? '?' + req.query : '–'],
			...(req.headers || []).map((h) => [h.name, h.value]),
		];
	}

	function fields(dl, pairs) {
		dl.replaceChildren(...pairs.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
	}

	function renderBody(d, at) {
		const pre = $(at.body);
		const raw = $(at.raw);
		if (d.body === undefined || d.body === null) {
			if (d.body_base64) {
				$(at.note).textContent = '(not UTF-8: shown as base64)';
				pre.textContent = d.body_base64;
			} else {
				pre.textContent = '(empty)';
			}
			raw.hidden = true;
			return;
		}
		raw.hidden = false;
		raw.ontoggle = () => {
			const rawPre = raw.querySelector('pre');
			if (raw.open && !rawPre.textContent) rawPre.textContent = d.body;
		};
		let doc;
		try {
			doc = JSON.parse(d.body);
		} catch (e) {
			$(at.note).textContent = '(not JSON)';
			pre.textContent = d.body;
			return;
		}
		const images = [];
		findImages(doc, '', images);
		const numbered = new Map(images.map((img, i) => [img.value, i + 1]));
		pre.textContent = JSON.stringify(doc, (k, v) => {
			if (typeof v !== 'string' || v.length <= SHOWN_CHARS) return v;
			const n = numbered.get(v);
			return v.slice(0, 60) + '… (' + v.length + ' characters' + (n ? ', image ' + n + ' above' : '') + ')';
		}, 2);
		$(at.note).textContent = '(JSON, pretty-printed' + (images.length ? '; long strings cut' : '') + ')';
		renderImages(images, at);
	}

	// findImages collects the strings of doc that are images: data URIs,
	// and base64 whose first bytes are a PNG, JPEG, GIF or WebP (as in
	// Runware's imageBase64Data and dataURI results).
	function findImages(v, path, out) {
		if (out.length >= 50) return;
		if (Array.isArray(v)) {
			v.forEach((x, i) => findImages(x, path + '[' + i + ']', out));
		} else if (v && typeof v === 'object') {
			for (const [k, x] of Object.entries(v)) findImages(x, path ? path + '.' + k : k, out);
		} else if (typeof v === 'string' && v.length >= 32) {
			if (IMAGE_TYPES.test(v)) {
				out.push({ path, value: v, src: v });
				return;
			}
			if (/audio|video/i.test(path)) return;
			for (const [magic, type] of IMAGE_MAGIC) {
				if (v.startsWith(magic) && /^[A-Za-z0-9+/]+={0,2}$/.test(v.slice(0, 4096))) {
					out.push({ path, value: v, src: 'data:' + type + ';base64,' + v });
					return;
				}
			}
		}
	}

	function renderImages(images, at) {
		show(at.images, images.length > 0);
		$(at.thumbs).replaceChildren(...images.map((img, i) => {
			const caption = el('figcaption', {}, (i + 1) + '. ' + img.path);
			const pic = el('img', { className: 'thumb', alt: 'image ' + (i + 1) + ' of the body (' + img.path + ')', src: img.src });
			pic.addEventListener('load', () => caption.append(' · ' + pic.naturalWidth + '×' + pic.naturalHeight));
			pic.addEventListener('error', () => caption.append(' · not a picture the browser can show'));
			return el('figure', {}, pic, caption);
		}));
	}

	// ---- replay and delete

	function confirmAction(text, okLabel) {
		const dialog = $('confirm');
		$('confirm-text').textContent = text;
		$('confirm-ok').textContent = okLabel;
		$('confirm-ok').className = okLabel.startsWith('Delete') ? 'danger' : '';
		dialog.returnValue = '';
		return new Promise((resolve) => {
			dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
			dialog.showModal();
			$('confirm-cancel').focus();
		});
	}

	async function act(verb, ids) {
		const relay = state.relay;
		const all = ids === null;
		const what = all ? 'all ' + plural(state.dead.length, 'dead letter', 'dead letters') + ' of ' + relay
			: ids.length === 1 ? 'dead letter ' + ids[0] + ' of ' + relay
				: plural(ids.length, 'dead letter', 'dead letters') + ' of ' + relay;
		const question = verb === 'replay'
			? 'Replay ' + what + '? They go back to the queue and are delivered to the upstream again.'
			: 'Delete ' + what + '? They cannot be brought back.';
		if (!await confirmAction(question, verb === 'replay' ? 'Replay' : 'Delete')) return;
		state.busy = true;
		try {
			const res = await call(verb, all ? { relay, all: true } : { relay, ids });
			const n = verb === 'replay' ? res.replayed : res.deleted;
			let msg = (verb === 'replay' ? 'Replayed ' : 'Deleted ') + plural(n, 'dead letter', 'dead letters') + ' of ' + relay + '.';
			if (!all && n < ids.length) msg += ' ' + (ids.length - n) + ' had already gone (replayed or deleted meanwhile).';
			notice(msg);
			for (const id of all ? [...state.selected] : ids) state.selected.delete(id);
			if (state.letterId) location.hash = href(relay);
			else await loadDead();
		} catch (e) {
			problem(verb + ': ' + e.message);
		} finally {
			state.busy = false;
		}
	}

	function wire() {
		$('confirm-ok').addEventListener('click', () => $('confirm').close('ok'));
		$('confirm-cancel').addEventListener('click', () => $('confirm').close('cancel'));
		$('filter-key').addEventListener('input', renderDead);
		$('filter-status').addEventListener('change', renderDead);
		$('select-all').addEventListener('change', () => {
			for (const e of shownDead()) {
				if ($('select-all').checked) state.selected.add(e.id);
				else state.selected.delete(e.id);
			}
			renderDead();
		});
		for (const b of document.querySelectorAll('button.sort')) {
			b.addEventListener('click', () => {
				const field = b.dataset.sort;
				state.sort = state.sort.field === field
					? { field, dir: state.sort.dir === 'asc' ? 'desc' : 'asc' }
					: { field, dir: 'desc' };
				renderDead();
			});
		}
		$('replay-selected').addEventListener('click', () => act('replay', [...state.selected]));
		$('delete-selected').addEventListener('click', () => act('delete', [...state.selected]));
		$('replay-all').addEventListener('click', () => act('replay', null));
		$('delete-all').addEventListener('click', () => act('delete', null));
		$('letter-replay').addEventListener('click', () => act('replay', [state.letterId]));
		$('letter-delete').addEventListener('click', () => act('delete', [state.letterId]));
		$('events-search').addEventListener('submit', (ev) => {
			ev.preventDefault();
			state.eventsMore = false;
			loadEvents(false);
		});
		$('events-state').addEventListener('change', () => { state.eventsMore = false; loadEvents(false); });
		$('events-destination').addEventListener('change', () => { state.eventsMore = false; loadEvents(false); });
		$('events-more').addEventListener('click', () => { state.eventsMore = true; loadEvents(true); });
		$('event-resend').addEventListener('click', resend);
		window.addEventListener('hashchange', onRoute);
	}

	wire();
	onRoute();
	refresh();
})();
