// Where each field of a JSON text is, so that an error's `field` (the API's path, such as
// `model.layers[1].units`) can be shown at its place in the editor. Pure functions.

/**
 * Every value's span in `text` (which JSON.parse accepts), keyed by path: an object
 * member's span runs from its key to the end of its value; the root's path is ''.
 */
export function spans(text) {
  const out = new Map();
  let i = 0;
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const str = () => {
    const start = i++;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
    return JSON.parse(text.slice(start, i));
  };
  const value = (path, from) => {
    ws();
    const start = i;
    const c = text[i];
    if (c === '{') {
      i++;
      ws();
      while (text[i] !== '}') {
        const ks = i;
        const key = str();
        ws();
        i++; // ':'
        value(path ? `${path}.${key}` : key, ks);
        ws();
        if (text[i] === ',') {
          i++;
          ws();
        }
      }
      i++;
    } else if (c === '[') {
      i++;
      ws();
      for (let n = 0; text[i] !== ']'; n++) {
        value(`${path}[${n}]`);
        ws();
        if (text[i] === ',') i++;
        ws();
      }
      i++;
    } else if (c === '"') {
      str();
    } else {
      while (i < text.length && !',]} \t\n\r'.includes(text[i])) i++;
    }
    out.set(path, { start: from ?? start, end: i });
  };
  value('');
  return out;
}

/** The parent of a path: `a.b[2].c` → `a.b[2]` → `a.b` → `a` → ''. */
export function parent(path) {
  const m = /^(.*?)(?:\.[^.[\]]+|\[\d+\])$/.exec(path);
  return m ? m[1] : '';
}

/**
 * The span to show for `field`: its own, or that of its nearest ancestor written in the
 * text (a preset's field the text does not spell out); null when only the root is.
 */
export function locate(map, field) {
  for (let p = field; p; p = parent(p)) {
    if (map.has(p)) return { ...map.get(p), exact: p === field, path: p };
  }
  return null;
}

/** 1-based line and column of offset `i` in `text`. */
export function lineCol(text, i) {
  const before = text.slice(0, i);
  const line = before.split('\n').length;
  return { line, col: i - before.lastIndexOf('\n') };
}

/**
 * Where `text` first breaks JSON's grammar, and what was expected there:
 * {offset, message}, or null when it is valid JSON. (Browsers' SyntaxError messages do
 * not all say where.)
 */
export function syntaxError(text) {
  let i = 0;
  const fail = (message) => {
    throw { offset: i, message };
  };
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const expect = (c, what) => {
    if (text[i] !== c) fail(`expected ${what}`);
    i++;
  };
  const str = () => {
    expect('"', 'a double-quoted string');
    for (;;) {
      if (i >= text.length) fail('unterminated string');
      const c = text[i];
      if (c === '"') break;
      if (c < ' ') fail('control character in a string (write \\n or \\t)');
      if (c === '\\') {
        i++;
        if (text[i] === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) fail('bad \\u escape');
          i += 4;
        } else if (!'"\\/bfnrt'.includes(text[i] ?? 'x')) fail('bad escape');
      }
      i++;
    }
    i++;
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      ws();
      if (text[i] === '}') return void i++;
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a double-quoted property name');
        str();
        ws();
        expect(':', "':'");
        value();
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        expect('}', "',' or '}'");
        return;
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') return void i++;
      for (;;) {
        value();
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        expect(']', "',' or ']'");
        return;
      }
    }
    if (c === '"') return str();
    const m = /^(?:-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 400));
    if (!m) fail(i >= text.length ? 'unexpected end of the text' : 'expected a value');
    i += m[0].length;
  };
  try {
    value();
    ws();
    if (i < text.length) fail('unexpected text after the end');
    return null;
  } catch (e) {
    if (e && typeof e.offset === 'number') return e;
    throw e;
  }
}
