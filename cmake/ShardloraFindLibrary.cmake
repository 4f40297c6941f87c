# shardlora_find_library(NAME HEADER LIBRARY): the imported target shardlora::NAME from a
# header and a shared library on the usual paths (or the cache variables NAME_INCLUDE_DIR and
# NAME_LIBRARY, upper case, which scripts/gpu-deps sets), with no pkg-config: the GPU box
# has none.
function(shardlora_find_library name header library)
  string(TOUPPER ${name} var)
  find_path(${var}_INCLUDE_DIR ${header} REQUIRED)
  find_library(${var}_LIBRARY ${library} REQUIRED)
  add_library(shardlora::${name} UNKNOWN IMPORTED GLOBAL)
  set_target_properties(shardlora::${name} PROPERTIES
    IMPORTED_LOCATION "${${var}_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${${var}_INCLUDE_DIR}")
  message(STATUS "${name}: ${${var}_LIBRARY}")
endfunction()
