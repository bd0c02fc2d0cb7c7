import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// Dependencies flow one way: bin → {server, mirror, agent, bootstrap, bundler} → platform → core.
// No component imports another; what two of them share moves down to platform/ or core/.
const COMPONENTS = ['server', 'mirror', 'agent', 'bootstrap', 'bundler'];
const folder = (names) => `^(\\.\\./)+(${names.join('|')})/`;
const boundary = (from, forbidden, extra = []) => ({
  files: [`${from}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      {
        paths: extra,
        patterns: [
          {
            regex: folder(forbidden),
            message: `${from}/ may not import ${forbidden.join(', ')}: move what is shared down to platform/ or core/`,
          },
        ],
      },
    ],
  },
});
// core/ is pure formats and trust rules: no file or network I/O.
const NO_IO = [
  'node:fs',
  'node:fs/promises',
  'node:http',
  'node:https',
  'node:net',
  'node:child_process',
].map((name) => ({ name, message: 'core/ does no I/O: put it in platform/' }));

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/', 'eslint.config.js', 'vitest.config.ts', 'scripts/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
    },
  },
  boundary('core', ['platform', ...COMPONENTS, 'bin'], NO_IO),
  boundary('platform', [...COMPONENTS, 'bin']),
  ...COMPONENTS.map((c) => boundary(c, [...COMPONENTS.filter((o) => o !== c), 'bin'])),
  // Tests beside the code may use test helpers and fixtures from anywhere.
  { files: ['**/*.test.ts'], rules: { 'no-restricted-imports': 'off' } },
);
