// The live websocket (/ws/live): keeps one connection open, reconnects with backoff, and
// re-sends the subscription after every (re)connect. What to do after a reconnect (reload from
// REST, since messages may have been missed) is the caller's business: see `onOpen`.

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 10000;
const OPEN = 1; // WebSocket.OPEN

export class Live {
  /**
   * @param {() => WebSocket} open opens a new socket to /ws/live (`Api.openLive`: all network
   *   I/O of the page lives in api.js)
   * @param {object} handlers onMessage(msg), onState('connecting'|'live'|'reconnecting'),
   *   onOpen(generation) — called after each (re)connect once the subscription is sent
   */
  constructor(open, { onMessage = () => {}, onState = () => {}, onOpen = () => {} } = {}) {
    this.open = open;
    this.handlers = { onMessage, onState, onOpen };
    this.names = [];
    this.socket = null;
    this.generation = 0; // bumps on every successful open
    this.attempts = 0;
    this.timer = null;
    this.waiters = [];
    this.stopped = false;
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === OPEN;
  }

  start() {
    this.stopped = false;
    this.connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000);
  }

  /** Follow these runs (by name), replacing the previous list; sent now if connected. */
  subscribe(names) {
    this.names = [...names];
    this.sendSubscription();
  }

  /** Resolves true once connected, or false after `timeoutMs`. */
  whenOpen(timeoutMs) {
    if (this.isOpen) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = (ok) => { clearTimeout(timer); resolve(ok); };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(false);
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  sendSubscription() {
    if (this.isOpen) this.socket.send(JSON.stringify({ subscribe: this.names }));
  }

  connect() {
    this.handlers.onState(this.generation === 0 ? 'connecting' : 'reconnecting');
    let socket;
    try {
      socket = this.open();
    } catch {
      this.retry();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.attempts = 0;
      this.generation += 1;
      this.sendSubscription();
      this.handlers.onState('live');
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w(true);
      this.handlers.onOpen(this.generation);
    };
    socket.onmessage = (event) => {
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (msg && typeof msg === 'object') this.handlers.onMessage(msg);
    };
    socket.onclose = () => {
      if (this.socket === socket) this.socket = null;
      if (!this.stopped) this.retry();
    };
    socket.onerror = () => { /* onclose follows and schedules the retry */ };
  }

  retry() {
    this.handlers.onState('reconnecting');
    const delay = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** this.attempts);
    this.attempts += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay * (0.75 + Math.random() * 0.5));
  }
}
