"""The two scripts storage_state runs in its own (intercepted, empty) page of an origin.

IndexedDB values and keys are carried as JSON: strings, booleans, finite numbers, null, arrays and
plain objects as themselves; everything else that is carried is an object tagged with `__bf`
(`{"__bf": "Date", "v": <ms since epoch or null>}`; a plain object that has an own `__bf` key is
wrapped as `{"__bf": "Object", "v": {...}}`, so no stored value is mistaken for a tag):

    undefined, NaN / ±Infinity / -0 ("number", v as text), BigInt ("bigint", v decimal text),
    Date, RegExp (v source, flags), ArrayBuffer, every typed array and DataView (v base64 of the
    view's bytes), Map (v [[k, v], ...]), Set (v [...]).

Not carried (the record is left out and counted in `skipped` by kind): Blob, File, FileList,
CryptoKey, ImageData/ImageBitmap, Error objects, Boolean/Number/String wrapper objects, cyclic
values, values nested deeper than 100 levels. Shared references are carried as copies.
The capture script stops (returns {"tooLarge": true}) once its output would pass `maxChars`. What
it counts is the output's length with a floor per value (16 characters a value, 32 an object, 64 a
record), so that a million tiny records weigh what they will cost as Python objects, not their
few bytes of JSON.
"""

CAPTURE = r"""
async (maxChars, batch) => {
  const TAG = "__bf", MAX_DEPTH = 100;
  class TooLarge extends Error {}
  class Unsupported extends Error {}
  let left = maxChars;
  const spend = (n) => { left -= n; if (left < 0) throw new TooLarge(); };
  const kindOf = (v) => Object.prototype.toString.call(v).slice(8, -1);
  const b64 = (u8) => {
    let s = "";
    for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
    return btoa(s);
  };
  const enc = (v, seen, depth) => {
    switch (typeof v) {
      case "string": spend(v.length + 16); return v;
      case "boolean": spend(16); return v;
      case "number":
        spend(32);
        if (Number.isFinite(v) && !Object.is(v, -0)) return v;
        return {[TAG]: "number", v: Object.is(v, -0) ? "-0" : String(v)};
      case "undefined": spend(32); return {[TAG]: "undefined"};
      case "bigint": { const s = v.toString(); spend(s.length + 48); return {[TAG]: "bigint", v: s}; }
      case "object": break;
      default: throw new Unsupported(typeof v);
    }
    if (v === null) { spend(16); return null; }
    if (depth > MAX_DEPTH) throw new Unsupported("too deep");
    if (seen.has(v)) throw new Unsupported("cyclic");
    seen.add(v);
    try {
      const kind = kindOf(v);
      if (Array.isArray(v)) {
        spend(32);
        const out = [];
        for (let i = 0; i < v.length; i++) { spend(8); out.push(enc(v[i], seen, depth + 1)); }
        return out;
      }
      if (kind === "Date") { spend(40); const t = v.getTime(); return {[TAG]: "Date", v: Number.isFinite(t) ? t : null}; }
      if (kind === "RegExp") { spend(v.source.length + v.flags.length + 40); return {[TAG]: "RegExp", v: v.source, flags: v.flags}; }
      if (kind === "ArrayBuffer") { spend(v.byteLength * 4 / 3 + 40); return {[TAG]: "ArrayBuffer", v: b64(new Uint8Array(v))}; }
      if (ArrayBuffer.isView(v)) {
        spend(v.byteLength * 4 / 3 + 40);
        return {[TAG]: kind, v: b64(new Uint8Array(v.buffer, v.byteOffset, v.byteLength))};
      }
      if (kind === "Map") {
        spend(30);
        const out = [];
        for (const [k, x] of v) { spend(40); out.push([enc(k, seen, depth + 1), enc(x, seen, depth + 1)]); }
        return {[TAG]: "Map", v: out};
      }
      if (kind === "Set") {
        spend(30);
        const out = [];
        for (const x of v) { spend(8); out.push(enc(x, seen, depth + 1)); }
        return {[TAG]: "Set", v: out};
      }
      if (kind === "Object" && Object.getPrototypeOf(v) === Object.prototype) {
        spend(32);
        const out = Object.create(null);  // so an own "__proto__" key stays a key
        let tagged = false;
        for (const k of Object.keys(v)) {
          spend(k.length + 16);
          if (k === TAG) tagged = true;
          out[k] = enc(v[k], seen, depth + 1);
        }
        return tagged ? {[TAG]: "Object", v: out} : out;
      }
      throw new Unsupported(kind);
    } finally {
      seen.delete(v);
    }
  };
  const done = (req) => new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const openExisting = (name) => new Promise((resolve) => {
    const req = indexedDB.open(name);
    req.onupgradeneeded = () => req.transaction.abort();  // deleted meanwhile: do not create it
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(null);
  });
  const out = {localStorage: [], indexedDB: [], skipped: {}};
  const skip = (why) => { out.skipped[why] = (out.skipped[why] || 0) + 1; };
  try {
    for (let i = 0; i < localStorage.length; i++) {
      const name = localStorage.key(i), value = name === null ? null : localStorage.getItem(name);
      if (value === null) continue;
      spend(name.length + value.length + 64);
      out.localStorage.push({name, value});
    }
    for (const info of await indexedDB.databases()) {
      if (typeof info.name !== "string") continue;
      const db = await openExisting(info.name);
      if (!db) continue;
      try {
        spend(db.name.length + 40);
        const entry = {name: db.name, version: db.version, stores: []};
        for (const storeName of Array.from(db.objectStoreNames)) {
          const schema = db.transaction(storeName, "readonly").objectStore(storeName);
          spend(storeName.length + JSON.stringify(schema.keyPath).length + 60);
          const store = {name: storeName, keyPath: schema.keyPath, autoIncrement: schema.autoIncrement,
                         indexes: [], records: []};
          for (const indexName of Array.from(schema.indexNames)) {
            const index = schema.index(indexName);
            spend(indexName.length + JSON.stringify(index.keyPath).length + 60);
            store.indexes.push({name: indexName, keyPath: index.keyPath, unique: index.unique,
                                multiEntry: index.multiEntry});
          }
          let range = null;
          for (;;) {  // in batches, so a huge store is never read whole before the cap stops it
            const s = db.transaction(storeName, "readonly").objectStore(storeName);
            const [keys, values] = await Promise.all([done(s.getAllKeys(range, batch)), done(s.getAll(range, batch))]);
            for (let i = 0; i < keys.length; i++) {
              spend(64);
              try {
                store.records.push({key: enc(keys[i], new Set(), 0), value: enc(values[i], new Set(), 0)});
              } catch (e) {
                if (!(e instanceof Unsupported)) throw e;
                skip(e.message);
              }
            }
            if (keys.length < batch) break;
            range = IDBKeyRange.lowerBound(keys[keys.length - 1], true);
          }
          entry.stores.push(store);
        }
        out.indexedDB.push(entry);
      } finally {
        db.close();
      }
    }
    const text = JSON.stringify(out);
    return text.length > maxChars ? JSON.stringify({tooLarge: true}) : text;
  } catch (e) {
    if (e instanceof TooLarge) return JSON.stringify({tooLarge: true});
    throw e;
  }
}
"""

# Its argument is the origin's entry as base64 of UTF-8 JSON: V8 takes a long string literal full
# of escapes in time that grows faster than its length (measured: 2.2 MB 0.75 s, 8.8 MB 8.6 s),
# base64 in linear time (1.1 s, 1.9 s).
RESTORE = r"""
async (payload) => {
  const TAG = "__bf";
  const VIEWS = new Map();
  for (const name of ["Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array",
                      "Uint32Array", "Float16Array", "Float32Array", "Float64Array", "BigInt64Array",
                      "BigUint64Array", "DataView"]) {
    if (typeof globalThis[name] === "function") VIEWS.set(name, globalThis[name]);
  }
  const bytes = (s) => {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(s);
    const bin = atob(s), u8 = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
    return u8;
  };
  const entry = JSON.parse(new TextDecoder().decode(bytes(payload)));
  const object = (v) => {
    const out = Object.create(null);
    for (const k of Object.keys(v)) out[k] = dec(v[k]);
    return out;
  };
  const dec = (v) => {
    if (v === null || typeof v !== "object") return v;
    if (Array.isArray(v)) return v.map(dec);
    if (!Object.prototype.hasOwnProperty.call(v, TAG)) return object(v);
    switch (v[TAG]) {
      case "undefined": return undefined;
      case "number": return Number(v.v);
      case "bigint": return BigInt(v.v);
      case "Date": return new Date(v.v === null ? NaN : v.v);
      case "RegExp": return new RegExp(v.v, v.flags);
      case "ArrayBuffer": return bytes(v.v).buffer;
      case "Map": return new Map(v.v.map(([k, x]) => [dec(k), dec(x)]));
      case "Set": return new Set(v.v.map(dec));
      case "Object": return object(v.v);
    }
    const View = VIEWS.get(v[TAG]);
    if (!View) throw new TypeError("unknown value tag");
    const u8 = bytes(v.v);
    return View === DataView ? new DataView(u8.buffer) : new View(u8.buffer, 0, u8.byteLength / View.BYTES_PER_ELEMENT);
  };
  const done = (req) => new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const restoreDatabase = async (d) => {
    await done(indexedDB.deleteDatabase(d.name));  // the state replaces a database of that name
    const req = indexedDB.open(d.name, d.version);
    req.onupgradeneeded = () => {
      for (const s of d.stores) {
        const store = req.result.createObjectStore(s.name, {keyPath: s.keyPath, autoIncrement: s.autoIncrement});
        for (const ix of s.indexes) store.createIndex(ix.name, ix.keyPath, {unique: ix.unique, multiEntry: ix.multiEntry});
      }
    };
    const db = await done(req);
    try {
      for (const s of d.stores) {
        if (!s.records.length) continue;
        await new Promise((resolve, reject) => {
          const tx = db.transaction(s.name, "readwrite");
          tx.oncomplete = resolve;
          tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
          const store = tx.objectStore(s.name);
          try {
            for (const r of s.records) {
              if (s.keyPath === null) store.put(dec(r.value), dec(r.key));
              else store.put(dec(r.value));
            }
          } catch (e) {
            tx.abort();
            reject(e);
          }
        });
      }
    } finally {
      db.close();
    }
  };
  const errors = [];
  try {
    for (const {name, value} of entry.localStorage) localStorage.setItem(name, value);
  } catch (e) {
    errors.push("localStorage: " + String(e && e.name));
  }
  for (const d of entry.indexedDB) {
    try {
      await restoreDatabase(d);
    } catch (e) {
      errors.push("indexedDB " + JSON.stringify(d.name) + ": " + String(e && e.name) + ": " + String(e && e.message));
    }
  }
  return JSON.stringify(errors);
}
"""
