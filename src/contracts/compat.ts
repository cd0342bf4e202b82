// Whether two cell nodes have the same contract, for an alias over both: the same input
// variables with the same types and the same optional ones (a default on one only would
// make a call that leaves it out fail on the other), and the same outputs. Defaults'
// values may differ: that is behaviour, like the cell's code, not the contract.
import type { CellNodeSpec, Variable } from '../core/types.js';
import { sameType } from '../core/var-types.js';

export interface ContractDifference {
  variable: string;
  side: 'input' | 'output';
  expected: string;
  got: string;
  message: string;
}

const describe = (v: Variable | undefined, side: 'input' | 'output'): string =>
  !v ? 'not declared' : `${v.type}${side === 'input' ? (Object.hasOwn(v, 'default') ? ' (optional)' : ' (required)') : ''}`;

function compare(a: Variable[], b: Variable[], side: 'input' | 'output'): ContractDifference | null {
  const names = [...new Set([...a.map((v) => v.name), ...b.map((v) => v.name)])];
  for (const name of names) {
    const x = a.find((v) => v.name === name);
    const y = b.find((v) => v.name === name);
    const same = x && y && sameType(x.type, y.type) && (side === 'output' || Object.hasOwn(x, 'default') === Object.hasOwn(y, 'default'));
    if (!same) {
      const expected = describe(x, side);
      const got = describe(y, side);
      return { variable: name, side, expected, got, message: `${side} variable "${name}" is ${expected} on the first backend but ${got} on this one` };
    }
  }
  return null;
}

export function contractDifference(a: CellNodeSpec, b: CellNodeSpec): ContractDifference | null {
  return compare(a.inputs, b.inputs, 'input') ?? compare(a.outputs, b.outputs, 'output');
}
