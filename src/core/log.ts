// Berth's structured log: one JSON object per line on stderr (pino), for the control
// plane (requests with their ids), lifecycle events (instance and node statuses) and
// unexpected errors. Nothing is logged per data-plane call: that path only counts metrics.
import { pino } from 'pino';

export const log = pino({
  base: undefined,
  level: process.env.BERTH_LOG_LEVEL ?? 'info',
  timestamp: pino.stdTimeFunctions.isoTime,
  formatters: { level: (label) => ({ level: label }) },
}, pino.destination({ fd: 2, sync: true }));
