// Splitting sources into cells: `# %%` scripts and Jupyter notebooks.
import { invalidArgument } from '../core/errors.js';

/** Cells of a script split on lines starting with `# %%`; text before the first marker is a cell if not blank. */
export function splitScript(text: string): string[] {
  const cells: string[] = [];
  let current: string[] = [];
  const flush = (): void => {
    const code = current.join('\n');
    // a cell of nothing but comments (a file header, say) runs nothing: skip it
    const runnable = current.some((l) => l.trim() !== '' && !l.trim().startsWith('#'));
    if (runnable) cells.push(code.replace(/\s+$/, '') + '\n');
    current = [];
  };
  for (const line of text.split(/\r?\n/)) {
    if (line.startsWith('# %%')) flush();
    else current.push(line);
  }
  flush();
  return cells;
}

/** Code cells of a notebook. IPython-only lines (`%magic`, `!shell`) are commented out: plain Python runs the cells. */
export function notebookCells(notebook: unknown): string[] {
  let nb = notebook;
  if (typeof nb === 'string') {
    try { nb = JSON.parse(nb); } catch { throw invalidArgument('notebook', 'is not valid JSON (.ipynb)'); }
  }
  const cells = (nb as { cells?: unknown })?.cells;
  if (!Array.isArray(cells)) throw invalidArgument('notebook', 'has no "cells" array: is it a Jupyter .ipynb file?');
  const out: string[] = [];
  for (const cell of cells) {
    if (cell?.cell_type !== 'code') continue;
    const src = Array.isArray(cell.source) ? cell.source.join('') : String(cell.source ?? '');
    const code = src.split('\n').map((l: string) => (/^\s*[%!]/.test(l) ? `# (IPython only, skipped) ${l}` : l)).join('\n');
    if (code.trim()) out.push(code.endsWith('\n') ? code : code + '\n');
  }
  return out;
}
