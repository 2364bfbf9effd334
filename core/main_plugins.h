/* dmnist-run's --list-plugins and --help-plugin (main_plugins.c). */
#ifndef DMNIST_MAIN_PLUGINS_H
#define DMNIST_MAIN_PLUGINS_H

/* The plugins found along the search path (with config_path's plugin_path,
 * when given), and what each shadows. Returns the exit code. */
int dm_cli_list_plugins(const char *extra, const char *config_path);
/* The keys of a plugin type, or of a core section ("train"). Returns the exit code. */
int dm_cli_help_plugin(const char *type, const char *extra, const char *config_path);

#endif
