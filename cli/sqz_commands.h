/* Subcommands of `sqz` that live in their own files; each takes the arguments after the
 * subcommand name and returns the process exit status. */
#ifndef SQZ_TOOLS_SQZ_COMMANDS_H
#define SQZ_TOOLS_SQZ_COMMANDS_H

/* sqz tokenize --model DIR [--max-length N] [--offsets]: JSON Lines in, token ids out. */
int sqz_cli_tokenize(int argc, char **argv);

/* sqz bench (--random PRESET | --model DIR) [grid, timing and output options]: timings over
 * backends x devices x precisions x batch sizes x lengths; see cli/sqz_bench.c. */
int sqz_cli_bench(int argc, char **argv);

/* sqz infer --model DIR [...]: JSON Lines of text in, one answer per line out, in order;
 * the contract is docs/infer.md. */
int sqz_cli_infer(int argc, char **argv);

/* sqz similarity --model DIR [...]: embeds a few texts and prints which are close. */
int sqz_cli_similarity(int argc, char **argv);

#endif
