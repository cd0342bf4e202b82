#!/usr/bin/env node
// Runs the built CLI (npm ci builds it into dist/).
import('../dist/cli/main.js');
