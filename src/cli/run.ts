// Entry point for running the CLI from the TypeScript sources (npm scripts, tests).
import { main } from './main.js';

await main();
