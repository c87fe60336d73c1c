// The experiments chosen for comparison, shared by the list and the header's Compare
// link, kept in sessionStorage so that a reload keeps them.

export const MIN = 2;
export const MAX = 8;
const KEY = 'trainyard.selection';
const listeners = new Set();

function load() {
  try {
    const v = JSON.parse(sessionStorage.getItem(KEY) || '[]');
    return Array.isArray(v) ? v.filter((x) => typeof x === 'string').slice(0, MAX) : [];
  } catch {
    return [];
  }
}

let ids = load();

function save() {
  try {
    sessionStorage.setItem(KEY, JSON.stringify(ids));
  } catch {
    /* storage may be off; the selection then lasts as long as the page */
  }
  for (const f of listeners) f(ids);
}

export const selection = {
  get: () => ids.slice(),
  has: (id) => ids.includes(id),
  /** Adds or removes one id; false when adding would pass MAX. */
  toggle(id, on) {
    if (on && !ids.includes(id)) {
      if (ids.length >= MAX) return false;
      ids = [...ids, id];
    } else if (!on) {
      ids = ids.filter((x) => x !== id);
    }
    save();
    return true;
  },
  clear() {
    ids = [];
    save();
  },
  ready: () => ids.length >= MIN && ids.length <= MAX,
  subscribe(f) {
    listeners.add(f);
    return () => listeners.delete(f);
  },
};
