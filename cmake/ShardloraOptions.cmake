# shardlora_tristate(VAR OUT): validates an ON|OFF|AUTO option and returns it upper-cased.
function(shardlora_tristate var out)
  string(TOUPPER "${${var}}" mode)
  if(NOT mode MATCHES "^(ON|OFF|AUTO)$")
    message(FATAL_ERROR "${var} must be ON, OFF or AUTO, not '${${var}}'")
  endif()
  set(${out} ${mode} PARENT_SCOPE)
endfunction()
