// Test service `crash`: prints "crashing on purpose" to stderr and exits with code 3 at once.
process.stderr.write('crashing on purpose\n', () => process.exit(3));
