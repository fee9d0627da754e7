// CSV text -> the rows the graph takes, read as `trainfer predict` reads a file: the delimiter and decimal comma
// sniffed (features/delimiter.py), pandas' missing-value markers, ISO dates as Python reads them, numbers
// checked (infinity and values beyond float32 refused), the id column found (runtime/files.py). No onnxruntime
// here: app.js builds the tensors.

// pandas' default missing-value markers: the same text means missing here as in `trainfer predict`
const MISSING = new Set(['', '#N/A', '#N/A N/A', '#NA', '-1.#IND', '-1.#QNAN', '-NaN', '-nan', '1.#IND', '1.#QNAN',
  '<NA>', 'N/A', 'NA', 'NULL', 'NaN', 'None', 'n/a', 'nan', 'null', 'NaT']);
const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const INFINITE = /^[+-]?inf(inity)?$/i;
const F32_MAX = 3.4028234663852886e38;

export class InputProblem extends Error {}

// RFC 4180: quoted fields may hold the delimiter, quotes ("") and line breaks. Returns rows of strings, each
// with the line it started on; blank lines are skipped (as pandas does).
function parseCsv(text, sep = ',') {
  const rows = [];
  let row = [], field = '', quoted = false, line = 1, start = 1, i = 0;
  if (text.charCodeAt(0) === 0xfeff) i = 1; // byte-order mark
  const endRow = () => {
    row.push(field);
    if (!(row.length === 1 && row[0] === '')) rows.push({ cells: row, line: start });
    row = []; field = '';
  };
  for (; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else { if (c === '\n') line++; field += c; }
    } else if (c === '"' && field === '') quoted = true;
    else if (c === sep) { row.push(field); field = ''; }
    else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      endRow(); line++; start = line;
    } else field += c;
  }
  if (quoted) throw new InputProblem(`line ${start}: a quoted field is not closed (a " is missing)`);
  if (field !== '' || row.length) endRow();
  return rows;
}

// How the text is written, as trainfer's features/delimiter.py reads a file (training and `trainfer predict`
// alike): the delimiter among ; tab | and comma that splits the header and the first 50 rows into the same
// number of fields most often (then: the most header fields; on a tie ; tab | before the comma), and a decimal
// comma when the delimiter is not a comma and the first 200 rows write numbers with commas, never with points.
const POINT = /^[-+]?\d*\.\d+([eE][-+]?\d+)?$/;
const COMMA = /^[-+]?\d*,\d+([eE][-+]?\d+)?$/;
function csvFormat(text) {
  const lines = text.replace(/^\ufeff/, '').split(/\r\n|\n|\r/);
  const head = lines.slice(0, 51);
  if (!head.length || head[0] === '') return { sep: ',', decimal: '.' };
  const unquoted = head[0].replace(/"[^"]*"/g, '');
  let best = ',', bestScore = [0, 1, 0];
  [';', '\t', '|', ','].forEach((d, rank) => {
    let counts;
    try { counts = head.map((l) => (l === '' ? 0 : parseCsv(l, d)[0].cells.length)); } catch (e) { return; }
    if (counts[0] < 2 || !unquoted.includes(d)) return;
    const score = [counts.slice(1).filter((c) => c === counts[0]).length, counts[0], -rank];
    const better = score[0] !== bestScore[0] ? score[0] > bestScore[0]
      : score[1] !== bestScore[1] ? score[1] > bestScore[1] : score[2] > bestScore[2];
    if (better) { best = d; bestScore = score; }
  });
  if (best === ',') return { sep: ',', decimal: '.' };
  let comma = false, point = false;
  try {
    for (const { cells } of parseCsv(lines.slice(0, 201).join('\n'), best).slice(1)) {
      for (const cell of cells) {
        const t = cell.trim();
        comma = comma || COMMA.test(t);
        point = point || POINT.test(t);
      }
    }
  } catch (e) { return { sep: best, decimal: '.' }; } // the full parse says what is wrong
  return { sep: best, decimal: comma && !point ? ',' : '.' };
}

// ISO 8601 dates and date-times, exactly those trainfer takes (features/tabular.py: the pattern, then Python's
// datetime.fromisoformat): seconds since 1970-01-01 UTC, a time without a zone being UTC; null if not one.
const ISO = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?(Z|([+-])(\d{2})(?::?(\d{2}))?)?$/;
function isoSeconds(s) {
  const m = ISO.exec(s);
  if (!m || (m[8] === 'Z' && m[4] === undefined)) return null; // fromisoformat refuses 2024-01-31Z
  let [y, mo, d, h, mi, sec] = [1, 2, 3, 4, 5, 6].map((k) => Number(m[k] || 0));
  // a date with a zone and no time (2024-01-31+02:00) is midnight in that zone, as for `trainfer predict`
  if (h > 23 || mi > 59 || sec > 59 || (m[10] !== undefined && (Number(m[10]) > 23 || Number(m[11] || 0) > 59))) {
    return null;
  }
  const utc = new Date(0);
  utc.setUTCFullYear(y, mo - 1, d); // years before 100 too (Date.UTC would take 24 as 1924)
  if (y < 1 || utc.getUTCFullYear() !== y || utc.getUTCMonth() !== mo - 1 || utc.getUTCDate() !== d) return null;
  utc.setUTCHours(h, mi, sec, 0);
  const offset = m[10] === undefined ? 0 : (m[9] === '-' ? -1 : 1) * (Number(m[10]) * 3600 + Number(m[11] || 0) * 60);
  const micros = Number((m[7] || '').padEnd(6, '0').slice(0, 6)); // fromisoformat keeps microseconds
  return ((utc.getTime() / 1000 - offset) * 1e6 + micros) / 1e6;
}

// One cell as the number the graph takes; an InputProblem (its message without the row and column) if it is none.
function toNumber(cell, dtype, decimal = '.') {
  const s = cell.trim();
  if (MISSING.has(s)) return NaN;
  if (INFINITE.test(s)) throw new InputProblem('value is infinite; send a finite number');
  const n = decimal === ',' ? s.replace(',', '.') : s;
  if (NUMBER.test(n)) {
    const v = Number(n);
    if (!Number.isFinite(v) || (dtype === 'float32' && Math.abs(v) > F32_MAX)) {
      throw new InputProblem(`${s} is too large for the model (beyond float32)`);
    }
    return v;
  }
  if (dtype === 'float64') { // dates and times
    const v = isoSeconds(s);
    if (v !== null) return v;
    throw new InputProblem('expected a number or a date/time such as 2024-01-31 or 2024-01-31T12:30:00, ' +
      `got ${JSON.stringify(cell)}`);
  }
  throw new InputProblem(`expected a number, got ${JSON.stringify(cell)}`);
}

// The column that names rows, as `trainfer predict` picks it (runtime/files.py): the training data's id column,
// else one named id; the exact name first, then in any case when only one column matches. -1: none.
function idColumnOf(header, trained) {
  const wanted = [trained, 'id'].filter(Boolean);
  for (const name of wanted) if (header.includes(name)) return header.indexOf(name);
  for (const name of wanted) {
    const found = header.filter((h) => h.toLowerCase() === name.toLowerCase());
    if (found.length === 1) return header.indexOf(found[0]);
  }
  return -1;
}

// The data rows, checked and converted: {name, values (one per graph input)}. Errors name the data row and column.
export function tableRows(text, spec) {
  const { sep, decimal } = csvFormat(text);
  const rows = parseCsv(text, sep);
  if (!rows.length) throw new InputProblem('no rows: paste a header line with the column names, then data rows');
  const header = rows[0].cells.map((h) => h.trim());
  const missing = spec.inputs.filter((i) => !header.includes(i.column)).map((i) => i.column);
  if (missing.length) {
    const shown = missing.slice(0, 5).map((m) => JSON.stringify(m)).join(', ');
    throw new InputProblem(`header (line ${rows[0].line}): column${missing.length > 1 ? 's' : ''} ${shown}` +
      `${missing.length > 5 ? ` and ${missing.length - 5} more` : ''} missing; the model needs ` +
      `${spec.inputs.length} columns (listed above the Predict button)`);
  }
  if (rows.length === 1) throw new InputProblem('no data rows below the header');
  const index = spec.inputs.map((i) => header.indexOf(i.column));
  const idAt = idColumnOf(header, spec.id_column);
  const out = [];
  for (let r = 1; r < rows.length; r++) {
    const { cells, line } = rows[r];
    const rowName = `data row ${r} (line ${line})`;
    if (cells.length !== header.length) {
      throw new InputProblem(`${rowName}: ${cells.length} fields, but the header has ${header.length}`);
    }
    // every cell is checked before the first run: an error names its row and column, and nothing runs
    const values = spec.inputs.map((inp, k) => {
      const cell = cells[index[k]];
      if (inp.dtype === 'string') return MISSING.has(cell.trim()) ? '' : cell;
      try {
        return toNumber(cell, inp.dtype, decimal);
      } catch (e) {
        throw new InputProblem(`${rowName}, column ${JSON.stringify(inp.column)}: ${e.message}`);
      }
    });
    out.push({ name: idAt >= 0 ? cells[idAt] : String(r), values });
  }
  out.idName = idAt >= 0 ? header[idAt] : null;
  return out;
}
